"""Status page speed with a large store: `/` must render in under 200 ms and `/metrics`
in under 100 ms, with 100,000 tickets in SQLite spread over a year, and with 150,000
tickets all received in the current month.

Two distributions (`--spread`):

- `year` (default, 100,000 tickets): spread over 400 days and a few hundred customer
  domains, in a help desk's proportions: about 1.6 inbound articles, 0.75 auto-replies,
  3.5 events and 0.75 outbox rows per ticket; old tickets are closed.
- `month` (150,000 tickets): everything received in the current calendar month, within
  the last 30 days (a large help desk, or one monitoring storm): about 1.2 articles and
  2 events per ticket (few follow-ups, most answers suppressed as auto-submitted), most
  tickets still open. Every 30-day window and the current month's per-domain figures
  cover the whole store.

The store is filled with SQLAlchemy core executemany. Each figure is the median of N
requests through the real HTTP socket of the status server. The baselines in the same
run: `/` on an empty database and `/healthz` on the full one.

    .venv/bin/python -m bench status [--spread=year|month] [--tickets=N] [--requests=20]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import itertools
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, select

TARGET_MS = 200.0
METRICS_TARGET_MS = 100.0
SPREADS = {"year": 100_000, "month": 150_000}  # distribution -> default ticket count
QUEUES = ("Support", "Billing", "Sales", "Postmaster")
# Suppression checks (autoresponse/suppress.py) with a reason text as the responder writes.
CHECKS = ("auto-submitted", "precedence", "daily-limit", "list", "noreply-sender",
          "out-of-office", "bounce")
DAYS = 400
BATCH = 10_000


def populate(engine: Engine, tickets: int, seed: int = 6, now: dt.datetime | None = None,
             spread: str = "year") -> None:
    """Insert `tickets` tickets with articles, events and outbox rows (SQLite, no ORM).

    `spread` "year": over DAYS days; "month": all in the current month and the last 30 days.
    """
    if engine.dialect.name != "sqlite":
        raise ValueError("populate() writes SQLite storage formats directly")
    from ticketstore.models import Article, Event, OutboxMessage, Queue, Ticket

    T, A, E, O, Q = (m.__table__ for m in (Ticket, Article, Event, OutboxMessage, Queue))  # noqa: E741
    rnd = random.Random(seed)
    now = now or dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        existing = dict(conn.execute(select(Q.c.name, Q.c.id)).all())
        for name in QUEUES:
            if name not in existing:
                conn.execute(insert(Q).values(name=name, created_at=now))
        qids = dict(conn.execute(select(Q.c.name, Q.c.id)).all())
        first_ticket = (conn.execute(select(T.c.id).order_by(T.c.id.desc()).limit(1))
                        .scalar() or 0) + 1
        first_article = (conn.execute(select(A.c.id).order_by(A.c.id.desc()).limit(1))
                         .scalar() or 0) + 1
    domains = [f"customer{i:03d}.example" for i in range(300)]
    cum: list[float] = list(itertools.accumulate(1 / (i + 1) for i in range(len(domains))))
    raw = b"From: x@y\r\nSubject: bench\r\n\r\nbody\r\n"
    tid, aid = first_ticket, first_article
    t_rows: list[dict[str, Any]] = []
    a_rows: list[dict[str, Any]] = []
    e_rows: list[dict[str, Any]] = []
    o_rows: list[dict[str, Any]] = []

    def flush(final: bool = False) -> None:
        if not final and len(t_rows) < BATCH:
            return
        with engine.begin() as conn:
            for table, rows in ((T, t_rows), (A, a_rows), (E, e_rows), (O, o_rows)):
                if rows:
                    _insert_many(conn, table, rows)
                    rows.clear()

    storm = spread == "month"
    if storm:
        month_start = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
        span = (now - max(month_start, now - dt.timedelta(days=30))).total_seconds()
    else:
        span = DAYS * 86400
    # Follow-ups per ticket, and the share of tickets that get an answer.
    follow_weights = (90, 8, 2, 0) if storm else (55, 30, 10, 5)
    answered = 0.1 if storm else 0.75
    for i in range(tickets):
        # Older tickets are rarer per day than recent ones would be; uniform is fine here.
        age = dt.timedelta(seconds=rnd.random() * span)
        created = now - age
        domain = rnd.choices(domains, cum_weights=cum)[0]
        user = f"user{rnd.randrange(50)}"
        queue = rnd.choices(QUEUES, (60, 20, 15, 5))[0]
        recent = age < dt.timedelta(days=14)
        state = (rnd.choice(("new", "open", "open", "pending", "closed")) if recent
                 else ("closed" if rnd.random() < 0.97 else rnd.choice(("open", "pending"))))
        closed_at = created + dt.timedelta(hours=rnd.random() * 200) if state == "closed" else None
        if closed_at is not None and closed_at > now:
            closed_at = now
        t_rows.append({
            "id": tid, "number": f"{created:%Y%m%d}10{tid:08d}", "title": f"Problem {i} with order",
            "queue_id": qids[queue], "state": state, "priority": rnd.choice((2, 3, 3, 3, 4)),
            "customer_address": f"{user}@{domain}", "customer_name": f"User {user}",
            "customer_domain": domain, "customer_id": "", "tags": "[]", "thread_key": None,
            "linked_ticket_id": None, "created_at": created, "updated_at": created,
            "closed_at": closed_at,
        })
        follow_ups = rnd.choices((0, 1, 2, 3), follow_weights)[0]
        for j in range(1 + follow_ups):
            at = created + dt.timedelta(hours=j * (0.5 if storm else 5))
            at = min(at, now)
            a_rows.append(_article(aid, tid, "in", "email", f"{tid}.{j}@bench.invalid", raw, at,
                                   domain))
            e_rows.append({"ticket_id": tid, "article_id": aid,
                           "kind": "created" if j == 0 else "follow-up",
                           "detail": f'{{"queue": "{queue}"}}', "created_at": at})
            aid += 1
        if rnd.random() < answered:
            a_rows.append(_article(aid, tid, "out", "auto-reply", f"ar{tid}@bench.invalid", raw,
                                   created, domain))
            e_rows.append({"ticket_id": tid, "article_id": aid, "kind": "autoresponse-sent",
                           "detail": '{"event": "new-ticket"}', "created_at": created})
            sent = not (recent and rnd.random() < 0.02)
            o_rows.append({
                "ticket_id": tid, "article_id": aid, "kind": "auto-reply", "mail_from": "",
                "rcpt_to": f"{user}@{domain}", "message_id": f"ar{tid}@bench.invalid",
                "message": raw, "state": "sent" if sent else rnd.choice(("pending", "failed")),
                "attempts": 1, "next_attempt_at": created, "last_error": "",
                "created_at": created, "sent_at": created if sent else None,
            })
            aid += 1
        else:
            e_rows.append({"ticket_id": tid, "article_id": None,
                           "kind": "autoresponse-suppressed",
                           "detail": _suppressed(rnd, storm),
                           "created_at": created})
        if rnd.random() < 0.05:
            e_rows.append({"ticket_id": None, "article_id": None, "kind": "ignored",
                           "detail": '{"rules": ["drop-spam"]}', "created_at": created})
        if rnd.random() < 0.005:
            e_rows.append({"ticket_id": None, "article_id": None, "kind": "size-rejected",
                           "detail": '{"size": 30000000}', "created_at": created})
        tid += 1
        flush()
    flush(final=True)


def _suppressed(rnd: random.Random, storm: bool) -> str:
    check = "auto-submitted" if storm and rnd.random() < 0.9 else rnd.choice(CHECKS)
    return (f'{{"event": "new-ticket", "check": "{check}", '
            f'"reason": "{check}: {rnd.randrange(10**6)}"}}')


DATETIME_COLUMNS = frozenset({"created_at", "updated_at", "closed_at", "next_attempt_at",
                              "sent_at"})


def _insert_many(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """executemany through the driver, values in SQLAlchemy's SQLite storage format.

    Datetimes become 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC) here and JSON columns are built
    as text by the caller: SQLAlchemy's per-value type processing would otherwise be most
    of the fill time.
    """
    names = list(rows[0])
    is_time = [n in DATETIME_COLUMNS for n in names]
    columns = ", ".join(f'"{n}"' for n in names)
    marks = ", ".join("?" for _ in names)
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({columns}) VALUES ({marks})",
        [tuple(v.isoformat(" ", "microseconds")[:26] if t and v is not None else v
               for v, t in zip(r.values(), is_time, strict=True)) for r in rows],
    )


def _article(aid: int, tid: int, direction: str, kind: str, mid: str, raw: bytes,
             at: dt.datetime, domain: str) -> dict[str, Any]:
    return {
        "id": aid, "ticket_id": tid, "direction": direction, "kind": kind, "message_id": mid,
        "content_hash": "0" * 64, "in_reply_to": "", "references": "",
        "from_address": f"someone@{domain}", "from_name": "", "to": "", "cc": "",
        "subject": "bench", "body_text": "body", "body_html": "", "raw": raw, "size": len(raw),
        "envelope_sender": "", "envelope_recipients": "[]", "classification": "[]",
        "created_at": at, **_verdict(aid if direction == "in" else None),
    }


def _verdict(n: int | None) -> dict[str, Any]:
    """Incoming mail: 6 in 10 aligned, 1 aligned_failed, 2 unverified, 1 not checked."""
    kind = None if n is None else n % 10
    return {"dkim": "pass" if kind in range(6) else "fail" if kind == 6 else "none",
            "aligned": int(kind in range(6)), "aligned_failed": int(kind == 6),
            "verdict_source": "off" if kind in (None, 9) else "dkimpy"}


class RunningServer:
    """The real status server on 127.0.0.1:0 in its own event-loop thread."""

    def __init__(self, db_url: str, base: Path) -> None:
        from gateway.config import config_from_dict
        from gateway.daemon import DaemonContext
        from gateway.intake.core import Intake
        from gateway.runtime import open_store
        from gateway.status.server import StatusServer

        self.config = config_from_dict({
            "database": {"url": db_url},
            "queues": [{"name": q, "addresses": [f"{q.lower()}@helpdesk.example"]}
                       for q in QUEUES],
            "intake": {"spool_dir": str(base / "spool")},
            "status": {"listen": "127.0.0.1:0"},
        }, source=str(base / "bench.toml"), base_dir=str(base))
        self.store = open_store(self.config)
        intake = Intake(self.config, self.store.factory)
        intake.sync_queues()
        self.ctx = DaemonContext(self.config, self.store, intake)
        self.loop = asyncio.new_event_loop()
        self.server = StatusServer(self.ctx)
        self.loop.run_until_complete(self.server.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.server.address[1]

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.store.dispose()


def measure(server: RunningServer, path: str, requests: int) -> float:
    """Median milliseconds of `requests` GETs (after one warm-up request)."""
    status, _ = server.get(path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}")
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        status, _body = server.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
    return statistics.median(times)


def main(argv: list[str]) -> int:
    opts = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    spread = opts.get("spread", "year")
    if spread not in SPREADS:
        print(f"unknown --spread={spread}; expected one of {', '.join(SPREADS)}")
        return 64
    tickets = int(opts.get("tickets", SPREADS[spread]))
    requests = int(opts.get("requests", 20))
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        base = Path(tmp)
        (base / "empty").mkdir()
        (base / "full").mkdir()
        empty = RunningServer(f"sqlite:///{base / 'empty' / 'tg.db'}", base / "empty")
        try:
            empty_ms = measure(empty, "/", requests)
        finally:
            empty.close()
        # Fill the store first, then start the daemon on it, as on a running site.
        full_url = f"sqlite:///{base / 'full' / 'tg.db'}"
        filler = RunningServer(full_url, base / "full")
        filler.close()  # creates the schema and the configured queues
        from ticketstore.db import make_engine

        engine = make_engine(full_url)
        t0 = time.perf_counter()
        populate(engine, tickets, spread=spread)
        fill_s = time.perf_counter() - t0
        engine.dispose()
        full = RunningServer(full_url, base / "full")
        try:
            t0 = time.perf_counter()
            status, _ = full.get("/")
            first_ms = (time.perf_counter() - t0) * 1000
            assert status == 200
            page_ms = measure(full, "/", requests)
            json_ms = measure(full, "/api/status.json", requests)
            health_ms = measure(full, "/healthz", requests)
            metrics_ms = measure(full, "/metrics", max(5, requests // 4))
            full.server.app.months.ttl = 0  # every request recomputes all 12 months
            uncached_ms = measure(full, "/", max(5, requests // 4))
        finally:
            full.close()
    where = ("all in the current month" if spread == "month"
             else f"over {DAYS} days")
    print(f"store: {tickets:,} tickets in SQLite ({where}), filled in {fill_s:.1f} s")
    print(f"median of {requests} requests over a real socket:")
    print(f"  /                 empty db   {empty_ms:8.1f} ms   (baseline)")
    print(f"  /healthz          {tickets:>7,}  {health_ms:8.1f} ms   (baseline)")
    print(f"  /                 {tickets:>7,}  {page_ms:8.1f} ms   "
          f"= {page_ms / empty_ms:.1f}x empty, {page_ms / health_ms:.1f}x healthz")
    print(f"  /api/status.json  {tickets:>7,}  {json_ms:8.1f} ms")
    print(f"  /metrics          {tickets:>7,}  {metrics_ms:8.1f} ms")
    print(f"  / first request right after start (month cache warming): {first_ms:.1f} ms")
    print(f"  / without the month cache (all 12 months each time): {uncached_ms:.1f} ms")
    ok = page_ms < TARGET_MS
    print(f"target: / under {TARGET_MS:.0f} ms with {tickets:,} tickets: "
          f"{'PASS' if ok else 'FAIL'}")
    metrics_ok = metrics_ms < METRICS_TARGET_MS
    print(f"target: /metrics under {METRICS_TARGET_MS:.0f} ms with {tickets:,} tickets: "
          f"{'PASS' if metrics_ok else 'FAIL'}")
    return 0 if ok and metrics_ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
