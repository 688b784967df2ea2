"""The figures of the status page, computed from the database in one read-only snapshot.

Counts over time (the 1 h / 24 h / 30 day windows, the daily chart, the per-domain months)
are sums of the hourly and monthly rollups the database keeps as mail is stored
(ticketstore/rollups.py), so they cost the same with 100 or 200,000 messages a month.
The rest are summary queries (COUNT/MIN ... GROUP BY) over indexed columns, never a loop
over rows. The result is plain data (dicts, lists, ISO strings) shared by the HTML page,
/api/status.json and /healthz.

Which figures are whose: everything read from the database is site-wide (the same on
every gateway sharing it); the spool, temp-failures, latest errors, rules, workers and
counters are this instance's own (`SCOPES`).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, case, exists, func, or_, select

from autoresponse.limits import flood_suppressions
from ticketstore import rollups
from ticketstore.models import Article, Event, OutboxMessage, Queue, Rollup, Ticket

# Event kinds counted as mail-flow dispositions (see gateway.intake / autoresponse).
FLOW_KINDS = ("created", "follow-up", "ignored", "rejected", "size-rejected")
AUTORESPONSE_KINDS = ("autoresponse-sent", "autoresponse-suppressed")
OPEN_STATES = ("new", "open", "pending")
# A ticket is "unanswered" while it is new/open and has no outgoing article written by
# a person: auto-replies, notifications and rejects do not count as an answer.
UNANSWERED_STATES = ("new", "open")
HUMAN_REPLY_KINDS = ("email",)
OUTBOX_STATES = ("pending", "sending", "sent", "failed")
UNSENT_STATES = ("pending", "sending", "failed")
WINDOWS: tuple[tuple[str, dt.timedelta], ...] = (
    ("hour", dt.timedelta(hours=1)),
    ("day", dt.timedelta(days=1)),
    ("month", dt.timedelta(days=30)),
)
CHART_DAYS = 30
STATS_MONTHS = 12
LATEST_TICKETS = 20
LATEST_ERRORS = 20

T = Ticket.__table__
A = Article.__table__
E = Event.__table__
O = OutboxMessage.__table__  # noqa: E741
Q = Queue.__table__
R = Rollup.__table__


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that never takes SQLite's write lock (BEGIN DEFERRED).

    On PostgreSQL the transaction is marked READ ONLY, so a bug here cannot write.
    """
    with engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin="DEFERRED")
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(postgresql_readonly=True)
        with conn.begin():
            yield conn


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else None


def _as_utc(value: Any) -> dt.datetime | None:
    """MIN()/MAX() over a column lose the column type on SQLite: parse the text back."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _age(now: dt.datetime, value: dt.datetime | None) -> float | None:
    return max(0.0, (now - value).total_seconds()) if value else None


def _zero() -> dict[str, int]:
    return {name: 0 for name, _ in WINDOWS}


# -- windows from the rollups -----------------------------------------------------------
#
# A window (now - 1 h / 24 h / 30 days) is read from the hourly rollups for its whole
# hours and from the stored rows only for the part of its first hour: at most an hour of
# rows per window, however much mail the window holds (ticketstore/rollups.py).


@dataclass(frozen=True)
class Raw:
    """Where a rollup series is counted from in the stored rows (for partial hours)."""

    key: Any
    at: Any
    where: Callable[[Sequence[str] | None], list[Any]]


def _in(col: Any) -> Callable[[Sequence[str] | None], list[Any]]:
    return lambda keys: [] if keys is None else [col.in_(list(keys))]


RAW: dict[str, Raw] = {
    # kind IN (...) lets index (kind, created_at) bound the scan to the hour.
    "events": Raw(E.c.kind, E.c.created_at, _in(E.c.kind)),
    "articles": Raw(A.c.direction, A.c.created_at, _in(A.c.direction)),
    "suppressed": Raw(func.coalesce(E.c.detail["check"].as_string(), ""), E.c.created_at,
                      lambda keys: [E.c.kind == rollups.SUPPRESSED_KIND]),
    # direction = 'in' lets index (direction, created_at) bound the scan to the hour.
    "senders": Raw(rollups.sender_key(A), A.c.created_at,
                   lambda keys: [rollups.sender_counted(A)]),
}


def hour_bucket(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H")


def _hour_up(at: dt.datetime) -> dt.datetime:
    """The first whole hour at or after `at`."""
    floor = at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return floor if floor == at else floor + dt.timedelta(hours=1)


def windowed(conn: Connection, series: str, now: dt.datetime,
             keys: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Per key of `series` (all keys when None): how many in the last hour / 24 h / 30 days."""
    out: dict[str, dict[str, int]] = {k: _zero() for k in keys or ()}
    edges = {name: _hour_up(now - delta) for name, delta in WINDOWS}
    first = hour_bucket(min(edges.values()))
    sums = [func.sum(case((R.c.bucket >= hour_bucket(edge), R.c.n), else_=0)).label(name)
            for name, edge in edges.items()]
    query = (select(R.c.key, *sums)
             .where(R.c.series == series, R.c.bucket >= first).group_by(R.c.key))
    if keys is not None:
        query = query.where(R.c.key.in_(list(keys)))
    for row in conn.execute(query):
        cell = out.setdefault(row.key, _zero())
        for name, _ in WINDOWS:
            cell[name] += int(getattr(row, name) or 0)
    raw = RAW[series]
    for name, delta in WINDOWS:
        since, edge = now - delta, edges[name]
        if since == edge:
            continue
        key = raw.key.label("k")
        for r in conn.execute(
            select(key, func.count().label("n"))
            .where(*raw.where(keys), raw.at >= since, raw.at < edge)
            .group_by(key)
        ):
            out.setdefault(r.k, _zero())[name] += int(r.n)
    return out


# -- mail flow ------------------------------------------------------------------------


def event_counts(conn: Connection, kinds: Iterable[str], now: dt.datetime) -> dict[str, dict]:
    """Per event kind, how many in the last hour / 24 h / 30 days."""
    return windowed(conn, "events", now, tuple(kinds))


def inbound_articles(conn: Connection, now: dt.datetime) -> dict[str, int]:
    return windowed(conn, "articles", now, ("in",))["in"]


def sender_verdicts(conn: Connection, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Incoming articles whose sender was verified (aligned), whose own domain's signature
    failed (aligned_failed), and that were checked but neither (unverified)."""
    return windowed(conn, "senders", now, rollups.SENDER_KEYS)


def spool_files(spool_dir: Path, now: dt.datetime) -> dict[str, Any]:
    """Quarantined messages (spool/failed/*.eml): total, and per window by file time."""
    folder = spool_dir / "failed"
    counts = _zero()
    total = 0
    oldest: dt.datetime | None = None
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if not entry.name.endswith(".eml") or entry.name.startswith("."):
            continue
        try:
            mtime = dt.datetime.fromtimestamp(entry.stat().st_mtime, dt.UTC)
        except FileNotFoundError:  # replayed while we looked
            continue
        total += 1
        oldest = mtime if oldest is None or mtime < oldest else oldest
        for name, delta in WINDOWS:
            if mtime >= now - delta:
                counts[name] += 1
    return {"total": total, "windows": counts, "oldest": _iso(oldest)}


# -- auto-responses and the outbox ----------------------------------------------------


def suppression_checks() -> tuple[str, ...]:
    """The closed set of suppression check names shown and exported (a label value must
    never be text a sender chose: an unbounded label set is a memory leak)."""
    from autoresponse.suppress import CHECKS

    return (*(name for name, _ in CHECKS), *EXTRA_CHECKS)


# Checks the auto-responder records outside autoresponse/suppress.py's table.
EXTRA_CHECKS = ("no-from-address", "template-error", "compose-error", "too-large")
OTHER_CHECK = "other"


def by_check(counts: dict[str, int]) -> dict[str, int]:
    """Fold counts keyed by recorded check name into the closed set (+ "other")."""
    known = suppression_checks()
    out: dict[str, int] = {}
    for name, n in counts.items():
        label = name if name in known else OTHER_CHECK
        if n:
            out[label] = out.get(label, 0) + n
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def suppressed_by_check(conn: Connection, now: dt.datetime) -> dict[str, int]:
    """Suppressed answers of the last 30 days by the check that suppressed them."""
    counts = windowed(conn, "suppressed", now)
    return by_check({k: v["month"] for k, v in counts.items()})


def outbox(conn: Connection, now: dt.datetime) -> dict[str, Any]:
    # Only the unsent states: counting every sent row would grow with the store forever.
    rows = conn.execute(
        select(O.c.state, func.count().label("n"))
        .where(O.c.state.in_(UNSENT_STATES))
        .group_by(O.c.state)
    ).all()
    states = {s: 0 for s in UNSENT_STATES}
    for r in rows:
        states[r.state] = int(r.n)
    oldest = _as_utc(conn.execute(
        select(func.min(O.c.created_at)).where(O.c.state.in_(("pending", "sending")))
    ).scalar())
    return {
        "states": states,
        "backlog": states.get("pending", 0) + states.get("sending", 0),
        "oldest_pending": _iso(oldest),
        "oldest_pending_age_seconds": _age(now, oldest),
    }


# -- queues and tickets ---------------------------------------------------------------


def open_tickets(conn: Connection, names: dict[int, str]) -> list[tuple[int, str, int]]:
    """(queue id, state, count) of the open tickets of the queues `names` lists."""
    if not names:
        return []
    # queue_id IN (...) AND state IN (...) is answered from index (queue_id, state) alone
    # (a join with queues instead reads every open ticket's row: 10-20x slower).
    return [(r.queue_id, r.state, int(r.n)) for r in conn.execute(
        select(T.c.queue_id, T.c.state, func.count().label("n"))
        .where(T.c.queue_id.in_(list(names)), T.c.state.in_(OPEN_STATES))
        .group_by(T.c.queue_id, T.c.state)
    )]


def queue_names(conn: Connection) -> dict[int, str]:
    return dict(conn.execute(select(Q.c.id, Q.c.name)).all())


def queues(conn: Connection, now: dt.datetime) -> list[dict[str, Any]]:
    """Open tickets per queue and state, and each queue's oldest unanswered ticket."""
    names = queue_names(conn)
    per: dict[int, dict[str, Any]] = {
        qid: {"queue": name, "states": {s: 0 for s in OPEN_STATES}, "open": 0,
              "oldest_unanswered": None, "oldest_unanswered_age_seconds": None}
        for qid, name in names.items()
    }
    if not per:
        return []
    for qid, state, n in open_tickets(conn, names):
        entry = per[qid]
        entry["states"][state] = n
        entry["open"] += n
    answered = exists().where(
        A.c.ticket_id == T.c.id, A.c.direction == "out", A.c.kind.in_(HUMAN_REPLY_KINDS)
    )
    for qid, entry in per.items():
        oldest: dt.datetime | None = None
        for state in UNANSWERED_STATES:
            if not entry["states"][state]:
                continue
            # Walks index (state, created_at) from the oldest and stops at the first hit.
            found = _as_utc(conn.execute(
                select(T.c.created_at)
                .where(T.c.state == state, T.c.queue_id == qid, ~answered)
                .order_by(T.c.created_at)
                .limit(1)
            ).scalar())
            if found is not None and (oldest is None or found < oldest):
                oldest = found
        entry["oldest_unanswered"] = _iso(oldest)
        entry["oldest_unanswered_age_seconds"] = _age(now, oldest)
    return sorted(per.values(), key=lambda q: (-q["open"], q["queue"]))


def latest_tickets(conn: Connection, limit: int = LATEST_TICKETS) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(T.c.number, Q.c.name.label("queue"), T.c.state, T.c.priority,
               T.c.customer_name, T.c.customer_address, T.c.title, T.c.created_at)
        .join(Q, Q.c.id == T.c.queue_id)
        .order_by(T.c.created_at.desc(), T.c.id.desc())
        .limit(limit)
    ).all()
    return [
        {"number": r.number, "queue": r.queue, "state": r.state, "priority": r.priority,
         "customer_name": r.customer_name or "", "customer_address": r.customer_address or "",
         "subject": r.title or "", "received": _iso(_as_utc(r.created_at))}
        for r in rows
    ]


def daily_volume(conn: Connection, now: dt.datetime, days: int = CHART_DAYS) -> list[dict]:
    """Per UTC day of the last `days` days: inbound messages and tickets created."""
    first = (now - dt.timedelta(days=days - 1)).date()
    day = func.substr(R.c.bucket, 1, 10).label("d")
    counts: dict[tuple[str, str], int] = {}
    for r in conn.execute(
        select(R.c.series, day, func.sum(R.c.n).label("n"))
        .where(R.c.bucket >= first.isoformat(),
               or_(R.c.series == "tickets", (R.c.series == "articles") & (R.c.key == "in")))
        .group_by(R.c.series, day)
    ):
        counts[(r.series, r.d)] = int(r.n)
    out = []
    for i in range(days):
        d = (first + dt.timedelta(days=i)).isoformat()
        out.append({"day": d, "received": counts.get(("articles", d), 0),
                    "created": counts.get(("tickets", d), 0)})
    return out


def _domain_rows(conn: Connection, start: dt.datetime,
                 end: dt.datetime | None) -> dict[tuple[str, str], dict[str, int]]:
    """(month, domain) -> created/closed for tickets created/closed in [start, end)."""
    stats: dict[tuple[str, str], dict[str, int]] = {}
    cond = [R.c.bucket >= f"{start:%Y-%m}"]
    if end is not None:
        cond.append(R.c.bucket < f"{end:%Y-%m}")
    for r in conn.execute(
        select(R.c.series, R.c.bucket, R.c.key, func.sum(R.c.n).label("n"))
        .where(R.c.series.in_(("domain-created", "domain-closed")), *cond)
        .group_by(R.c.series, R.c.bucket, R.c.key)
    ):
        if not r.n:
            continue  # closed, then reopened
        cell = stats.setdefault((r.bucket, r.key or ""), {"created": 0, "closed": 0})
        cell[r.series.removeprefix("domain-")] = int(r.n)
    return stats


class MonthCache:
    """Completed months hardly change (only a reopened ticket takes back its close),
    so their per-domain figures are kept for `ttl` seconds; the current month is always
    computed fresh. This keeps the page fast however many months the store holds."""

    def __init__(self, ttl: float = 600.0) -> None:
        self.ttl = ttl
        self.key: tuple[str, str] | None = None
        self.rows: dict[tuple[str, str], dict[str, int]] = {}
        self.at = 0.0
        self.lock = threading.Lock()

    def past(self, conn: Connection, first: dt.datetime,
             current: dt.datetime) -> dict[tuple[str, str], dict[str, int]]:
        key = (first.isoformat(), current.isoformat())
        with self.lock:
            fresh = self.key == key and time.monotonic() - self.at < self.ttl
            if not fresh:
                self.rows = _domain_rows(conn, first, current)
                self.key, self.at = key, time.monotonic()
            return self.rows


def domain_months(conn: Connection, now: dt.datetime, months: int = STATS_MONTHS,
                  cache: MonthCache | None = None) -> list[dict[str, Any]]:
    """Tickets created and closed per customer domain per calendar month (UTC)."""
    first = _month_start(now, months - 1)
    current = _month_start(now, 0)
    past = (cache.past(conn, first, current) if cache is not None
            else _domain_rows(conn, first, current))
    stats = {**past, **_domain_rows(conn, current, None)}
    return [
        {"month": m, "domain": d, **v}
        for (m, d), v in sorted(stats.items(), key=lambda kv: (kv[0][0], -kv[1]["created"],
                                                                kv[0][1]))
    ]


def _month_start(now: dt.datetime, back: int) -> dt.datetime:
    y, m = now.year, now.month - back
    while m < 1:
        y, m = y - 1, m + 12
    return dt.datetime(y, m, 1, tzinfo=dt.UTC)


def month_labels(now: dt.datetime, months: int) -> list[str]:
    return [_month_start(now, i).strftime("%Y-%m") for i in range(months - 1, -1, -1)]


# -- the whole snapshot ---------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """What the snapshot reads besides the database (all owned by the daemon)."""

    spool_dir: Path
    started_at: dt.datetime
    version: str
    counters: dict[str, int]
    errors: list[dict[str, Any]]
    rules: dict[str, Any] | None
    # Intake worker processes (gateway/server/workers.py); None when serving in-process.
    workers: list[dict[str, Any]] | None = None


def database_info(engine: Engine, conn: Connection) -> dict[str, str]:
    dialect = engine.dialect.name
    if dialect == "sqlite":
        version = sqlite3.sqlite_version
    else:
        info = engine.dialect.server_version_info or ()
        version = ".".join(str(p) for p in info)
    return {"backend": dialect, "version": version}


def snapshot(engine: Engine, src: Sources, now: dt.datetime,
             cache: MonthCache | None = None) -> dict[str, Any]:
    """All figures of the page in one read-only transaction (one consistent view)."""
    with read_only(engine) as conn:
        events = event_counts(conn, FLOW_KINDS + AUTORESPONSE_KINDS, now)
        inbound = inbound_articles(conn, now)
        spool = spool_files(src.spool_dir, now)
        received = {
            w: inbound[w] + events["ignored"][w] + events["size-rejected"][w] for w in inbound
        }
        temp_failed = temp_failed_count(src.counters)
        flow = {
            "received": received,
            "stored": inbound,
            "created": events["created"],
            "follow_ups": events["follow-up"],
            "ignored": events["ignored"],
            "rejected": events["rejected"],
            "size_rejected": events["size-rejected"],
            "quarantined": spool["windows"],
        }
        data = {
            "generated_at": _iso(now),
            "instance": {"host": socket.gethostname(), "pid": os.getpid()},
            "scopes": {scope: list(keys) for scope, keys in SCOPES.items()},
            "version": src.version,
            "started_at": _iso(src.started_at),
            "uptime_seconds": max(0.0, (now - src.started_at).total_seconds()),
            "database": database_info(engine, conn),
            "rules": _rules(src.rules),
            "workers": src.workers,
            "mail_flow": flow,
            "senders": sender_verdicts(conn, now),
            "temp_failed_since_start": temp_failed,
            "spool": {"quarantined": spool["total"], "oldest": spool["oldest"]},
            "autoresponses": {
                "sent": events["autoresponse-sent"],
                "suppressed": events["autoresponse-suppressed"],
                "suppressed_by_check_30d": suppressed_by_check(conn, now),
                # Answers stopped by the site's / a domain's hourly limit (issue 16).
                "flood_limited_last_hour": flood_suppressions(conn, now),
            },
            "outbox": outbox(conn, now),
            "queues": queues(conn, now),
            "latest_tickets": latest_tickets(conn),
            "latest_errors": src.errors[:LATEST_ERRORS],
            "daily_volume": daily_volume(conn, now),
            "domain_months": domain_months(conn, now, cache=cache),
            "counters": dict(sorted(src.counters.items())),
        }
    return data


# Which figures are whose (docs/status.md): read from the shared database, the same on
# every gateway, or this gateway's own (its memory, its host's spool). Dotted names are
# single fields inside a site-wide object.
SCOPES: dict[str, tuple[str, ...]] = {
    "site": ("database", "mail_flow", "autoresponses", "outbox", "queues", "latest_tickets",
             "daily_volume", "domain_months", "senders"),
    "instance": ("instance", "version", "health", "started_at", "uptime_seconds", "rules",
                 "workers", "mail_flow.quarantined", "temp_failed_since_start", "spool",
                 "latest_errors", "counters"),
}


def _rules(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if not state:
        return None
    loaded = state.get("loaded_at")
    if isinstance(loaded, dt.datetime):
        loaded = _iso(loaded)
    errors = state.get("errors") or []
    if isinstance(errors, str):
        errors = [errors]
    return {"count": state.get("count"), "loaded_at": loaded,
            "errors": [str(e) for e in errors], "errors_at": state.get("errors_at")}


# The daemon's in-memory counters that mean "answered 451 / exit 75" (names used by
# gateway/server and the brief's generic name).
TEMP_FAIL_COUNTERS = ("server.tempfail", "temp-failed")


def temp_failed_count(counters: dict[str, int]) -> int:
    return sum(int(counters.get(name, 0)) for name in TEMP_FAIL_COUNTERS)

