"""The status figures on SQLite and PostgreSQL: windows, queues, domains, chart, outbox."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import insert

from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.ports import NullRouter, Route
from gateway.mail.envelope import Envelope
from gateway.runtime import Store
from gateway.spool import quarantine
from gateway.status import queries
from gateway.status.queries import MonthCache, Sources, read_only, snapshot
from tests.status_helpers import deliver, message
from ticketstore.models import Article, Event, OutboxMessage, Ticket

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


class IgnoreSpam(NullRouter):
    """A router that ignores subjects containing 'SPAM' (the rules engine's `ignore`)."""

    def route(self, msg, envelope, classification, verdict=None):  # type: ignore[no-untyped-def]
        if "SPAM" in msg.subject:
            return Route(ignore=True, matched=("drop-spam",))
        return Route()


def sources(config: Config, counters: dict[str, int] | None = None) -> Sources:
    return Sources(spool_dir=config.path(config.intake.spool_dir), started_at=NOW,
                   version="test", counters=counters or {}, errors=[], rules=None)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def timed_intake(config: Config, store: Store, clock: Clock) -> Intake:
    i = Intake(config, store.factory, router=IgnoreSpam(), clock=clock)
    i.sync_queues()
    return i


def test_mail_flow_windows(config: Config, store: Store, timed_intake: Intake,
                           clock: Clock) -> None:
    # 40 days ago (outside every window), 3 days ago (30 d), 3 h ago (24 h), 10 min ago (1 h).
    for ago, subject in [(dt.timedelta(days=40), "old"), (dt.timedelta(days=3), "days"),
                         (dt.timedelta(hours=3), "hours"), (dt.timedelta(minutes=10), "now")]:
        clock.at = NOW - ago
        d = deliver(timed_intake, message(f"Question {subject}"))
        deliver(timed_intake, message(f"Re: [Ticket#{d.ticket_number}] Question {subject}"))
    clock.at = NOW - dt.timedelta(minutes=5)
    deliver(timed_intake, message("Buy SPAM now"))
    timed_intake.record_size_rejected(99_999_999, Envelope("big@x.example", ("support@h",)))
    with store.factory() as s, s.begin():
        s.add(Event(kind="rejected", created_at=NOW - dt.timedelta(hours=2),
                    detail={"reason": "follow-up to a closed ticket"}))
    quarantine(config.path(config.intake.spool_dir), b"Subject: x\r\n\r\nx",
               Envelope("a@b", ("c@d",)), RuntimeError("bug"))

    data = snapshot(store.engine, sources(config, {"server.tempfail": 3}), NOW)
    flow = data["mail_flow"]
    assert flow["created"] == {"hour": 1, "day": 2, "month": 3}
    assert flow["follow_ups"] == {"hour": 1, "day": 2, "month": 3}
    assert flow["stored"] == {"hour": 2, "day": 4, "month": 6}
    assert flow["ignored"] == {"hour": 1, "day": 1, "month": 1}
    assert flow["size_rejected"] == {"hour": 1, "day": 1, "month": 1}
    assert flow["rejected"] == {"hour": 0, "day": 1, "month": 1}
    # received = stored articles + ignored + refused for size
    assert flow["received"] == {"hour": 4, "day": 6, "month": 8}
    # The spool file was written just now (real time), so it counts in every window
    # of a snapshot taken now.
    live = snapshot(store.engine, sources(config), dt.datetime.now(dt.UTC))
    assert live["mail_flow"]["quarantined"] == {"hour": 1, "day": 1, "month": 1}
    assert live["spool"]["quarantined"] == 1
    assert data["temp_failed_since_start"] == 3


def test_autoresponses_and_outbox(config: Config, store: Store, intake: Intake) -> None:
    d = deliver(intake, message("Hello"))
    with store.factory() as s, s.begin():
        for reason, n in (("precedence", 2), ("out-of-office", 1)):
            for _ in range(n):
                s.add(Event(kind="autoresponse-suppressed", created_at=NOW,
                            detail={"reason": reason, "check": reason}))
        s.add(Event(kind="autoresponse-suppressed", created_at=NOW - dt.timedelta(days=31),
                    detail={"reason": "bulk"}))
        s.add(Event(kind="autoresponse-sent", created_at=NOW - dt.timedelta(minutes=1),
                    detail={"event": "new-ticket", "to": "a@x.example"}))
        for _ in range(2):
            s.add(Event(kind="autoresponse-sent", created_at=NOW - dt.timedelta(days=2),
                        detail={"event": "agent-notification"}))
        states = [("pending", 3), ("pending", 1), ("sending", 0), ("failed", 5), ("sent", 2)]
        for i, (state, hours) in enumerate(states):
            s.add(OutboxMessage(kind="auto-reply", rcpt_to="a@x.example",
                                message_id=f"o{i}@x", message=b"x", state=state,
                                created_at=NOW - dt.timedelta(hours=hours)))
    data = snapshot(store.engine, sources(config), NOW)
    ar = data["autoresponses"]
    assert ar["sent"] == {"hour": 1, "day": 1, "month": 3}
    assert ar["suppressed"] == {"hour": 3, "day": 3, "month": 3}
    assert ar["suppressed_by_check_30d"] == {"precedence": 2, "out-of-office": 1}
    assert list(ar["suppressed_by_check_30d"]) == ["precedence", "out-of-office"]
    ob = data["outbox"]
    assert ob["states"] == {"pending": 2, "sending": 1, "failed": 1}
    assert ob["backlog"] == 3
    assert ob["oldest_pending_age_seconds"] == 3 * 3600
    assert d.ticket_number


def test_queues_and_oldest_unanswered(config: Config, store: Store, timed_intake: Intake,
                                      clock: Clock) -> None:
    def ticket(ago: dt.timedelta, to: str = "support@helpdesk.example") -> str:
        clock.at = NOW - ago
        d = deliver(timed_intake, message(f"t {ago}", to=to), rcpt=to)
        assert d.ticket_number
        return d.ticket_number

    answered = ticket(dt.timedelta(days=9))    # oldest, but a person replied
    auto_only = ticket(dt.timedelta(days=5))   # only an auto-reply went out: unanswered
    pending = ticket(dt.timedelta(days=8))     # pending: waiting for someone else
    ticket(dt.timedelta(days=1))
    closed = ticket(dt.timedelta(days=20))
    ticket(dt.timedelta(hours=2), to="billing@helpdesk.example")
    with store.factory() as s, s.begin():
        by_number = {t.number: t for t in s.query(Ticket)}
        for number, kind in ((answered, "email"), (auto_only, "auto-reply")):
            s.add(Article(ticket_id=by_number[number].id, direction="out", kind=kind,
                          message_id=f"{number}-out@helpdesk", content_hash="0" * 64,
                          raw=b"x", created_at=NOW))
        by_number[pending].state = "pending"
        by_number[closed].state = "closed"
        by_number[closed].closed_at = NOW
    data = snapshot(store.engine, sources(config), NOW)
    q = {row["queue"]: row for row in data["queues"]}
    assert q["Support"]["states"] == {"new": 3, "open": 0, "pending": 1}
    assert q["Support"]["open"] == 4
    assert q["Support"]["oldest_unanswered_age_seconds"] == 5 * 86400
    assert q["Billing"]["open"] == 1
    assert q["Billing"]["oldest_unanswered_age_seconds"] == 2 * 3600
    assert q["Sales"]["open"] == 0 and q["Sales"]["oldest_unanswered"] is None
    assert [row["queue"] for row in data["queues"]][:2] == ["Support", "Billing"]


def test_latest_tickets_newest_first(config: Config, store: Store, intake: Intake) -> None:
    numbers = [deliver(intake, message(f"Subject {i}",
                                       sender=f"Person {i} <p{i}@d{i}.example>")).ticket_number
               for i in range(25)]
    data = snapshot(store.engine, sources(config), NOW)
    latest = data["latest_tickets"]
    assert len(latest) == queries.LATEST_TICKETS
    assert [t["number"] for t in latest] == list(reversed(numbers))[:20]
    assert latest[0] | {"received": None} == {
        "number": numbers[-1], "queue": "Support", "state": "new", "priority": 3,
        "customer_name": "Person 24", "customer_address": "p24@d24.example",
        "subject": "Subject 24", "received": None}


def test_daily_volume_has_thirty_zero_filled_days(config: Config, store: Store,
                                                  timed_intake: Intake, clock: Clock) -> None:
    for ago in (0, 0, 2, 29, 30):
        clock.at = NOW - dt.timedelta(days=ago)
        deliver(timed_intake, message(f"d{ago}"))
    days = snapshot(store.engine, sources(config), NOW)["daily_volume"]
    assert len(days) == 30
    assert days[-1] == {"day": "2026-11-22", "received": 2, "created": 2}
    assert days[-3]["day"] == "2026-11-20" and days[-3]["created"] == 1
    assert days[0] == {"day": "2026-10-24", "received": 1, "created": 1}
    assert sum(d["created"] for d in days) == 4  # 30 days ago is outside the chart


def first_queue(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT min(id) FROM queues").scalar_one())


def test_domain_months_created_and_closed(config: Config, store: Store, intake: Intake) -> None:
    qid = first_queue(store)
    rows = []
    for i, (created, closed, domain) in enumerate([
        ("2026-11-03", None, "a.example"),
        ("2026-11-04", "2026-11-05", "a.example"),
        ("2026-10-30", "2026-11-02", "a.example"),  # created Oct, closed Nov
        ("2026-09-10", "2026-09-11", "b.example"),
        ("2025-10-01", "2025-10-02", "old.example"),  # more than 12 months ago
    ]):
        c = dt.datetime.fromisoformat(created).replace(tzinfo=dt.UTC)
        rows.append({"number": f"n{i}", "title": "t", "queue_id": qid, "state":
                     "closed" if closed else "new", "priority": 3, "customer_domain": domain,
                     "created_at": c, "updated_at": c,
                     "closed_at": dt.datetime.fromisoformat(closed).replace(tzinfo=dt.UTC)
                     if closed else None, "tags": []})
    with store.engine.begin() as conn:
        conn.execute(insert(Ticket.__table__), rows)
    data = snapshot(store.engine, sources(config), NOW)
    got = {(r["month"], r["domain"]): (r["created"], r["closed"]) for r in data["domain_months"]}
    assert got == {
        ("2026-11", "a.example"): (2, 2),
        ("2026-10", "a.example"): (1, 0),
        ("2026-09", "b.example"): (1, 1),
    }


def test_month_cache_keeps_past_months_and_recomputes_the_current_one(
    config: Config, store: Store, intake: Intake
) -> None:
    qid = first_queue(store)

    def add(number: str, created: dt.datetime) -> None:
        with store.engine.begin() as conn:
            conn.execute(insert(Ticket.__table__), [{
                "number": number, "queue_id": qid, "state": "new", "customer_domain": "c.example",
                "created_at": created, "updated_at": created, "tags": []}])

    cache = MonthCache(ttl=3600)
    add("p1", NOW - dt.timedelta(days=40))
    with read_only(store.engine) as conn:
        first = queries.domain_months(conn, NOW, cache=cache)
    add("p2", NOW - dt.timedelta(days=40))  # a past month: the cache still says 1
    add("c1", NOW)  # the current month is always fresh
    with read_only(store.engine) as conn:
        second = queries.domain_months(conn, NOW, cache=cache)
        uncached = queries.domain_months(conn, NOW)
    month = (NOW - dt.timedelta(days=40)).strftime("%Y-%m")

    def created(rows: list[dict], m: str) -> int:
        return sum(r["created"] for r in rows if r["month"] == m)

    assert created(first, month) == 1
    assert created(second, month) == 1
    assert created(second, "2026-11") == 1
    assert created(uncached, month) == 2
    cache.ttl = 0
    with read_only(store.engine) as conn:
        assert created(queries.domain_months(conn, NOW, cache=cache), month) == 2


def test_read_only_snapshot_does_not_block_a_writer(tmp_path: Path, config: Config,
                                                    store: Store, intake: Intake) -> None:
    """A writer commits while a status read transaction is open (BEGIN DEFERRED + WAL)."""
    deliver(intake, message("first"))
    with read_only(store.engine) as conn:
        conn.exec_driver_sql("SELECT count(*) FROM tickets").scalar()
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(
            deliver(intake, message("written while the page reads"))))
        t.start()
        t.join(30)
        assert result and getattr(result[0], "ticket_number", None)


def test_read_only_transaction_refuses_writes_on_postgresql(pg_url: str,
                                                            tmp_path: Path) -> None:
    from sqlalchemy import exc as sa_exc

    from ticketstore.db import make_engine, upgrade

    engine = make_engine(pg_url)
    upgrade(engine)
    try:
        with pytest.raises(sa_exc.DBAPIError, match="read-only"), \
                read_only(engine) as conn:
            conn.exec_driver_sql("INSERT INTO queues (name, created_at) VALUES ('x', now())")
        # The pooled connection is not left read-only for the next (writing) user.
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO queues (name, created_at) VALUES ('y', now())")
    finally:
        engine.dispose()
