"""The rollups behind the status page: kept exact by every writer, filled by the migration,
and never a point where concurrent PostgreSQL writers wait for each other."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, case, func, select, text, update

from autoresponse.autoresponder import AutoResponder
from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.ports import NullRouter, Route
from gateway.mail.envelope import Envelope
from gateway.runtime import Store
from gateway.status.queries import read_only, windowed
from tests.status_helpers import deliver, message
from tests.support import make_config
from ticketstore import rollups
from ticketstore.db import alembic_config, make_engine, upgrade
from ticketstore.models import Article, Event, Rollup, Ticket

R, T, A = Rollup.__table__, Ticket.__table__, Article.__table__
NOW = dt.datetime(2026, 11, 22, 12, 34, 56, 789000, tzinfo=dt.UTC)


class IgnoreSpam(NullRouter):
    def route(self, msg, envelope, classification, verdict=None):  # type: ignore[no-untyped-def]
        return Route(ignore=True, matched=("spam",)) if "SPAM" in msg.subject else Route()


MTA = "mx.helpdesk.example"
# What our MTA says of a message (dkim = false: its Authentication-Results is the verdict),
# and under which `senders` key the status page counts it (None: not checked, not counted).
VERDICTS: list[tuple[str, str | None]] = [
    (f"Authentication-Results: {MTA}; dkim=pass header.d=dom0.example\r\n", "aligned"),
    (f"Authentication-Results: {MTA}; dkim=fail header.d=dom0.example\r\n", "aligned_failed"),
    (f"Authentication-Results: {MTA}; dkim=pass header.d=mailer.example\r\n", "unverified"),
    (f"Authentication-Results: {MTA}; dkim=none\r\n", "unverified"),
    ("", None),
]


def verifying_intake(tmp_path: Path, db_url: str, store: Store,
                     clock: list[dt.datetime]) -> Intake:
    """An intake that takes our MTA's Authentication-Results as the sender verdict."""
    config = make_config(tmp_path, db_url, verify={"dkim": False, "trusted_authserv_ids": [MTA]})
    intake = Intake(config, store.factory, router=IgnoreSpam(),
                    responder=AutoResponder(config), clock=lambda: clock[0])
    intake.sync_queues()
    return intake


def counts(conn: Connection) -> dict[tuple[str, str, str], int]:
    """Every rollup cell summed over its shards, zero cells left out."""
    rows = conn.execute(
        select(R.c.series, R.c.bucket, R.c.key, func.sum(R.c.n))
        .group_by(R.c.series, R.c.bucket, R.c.key)
    ).all()
    return {(s, b, k): int(n) for s, b, k, n in rows if n}


def recount(engine: Engine) -> dict[tuple[str, str, str], int]:
    """What rebuilding from the stored rows gives (rolled back: the table stays as is)."""
    with engine.connect() as conn:
        trans = conn.begin()
        rollups.rebuild(conn)
        fresh = counts(conn)
        trans.rollback()
    return fresh


def test_every_writer_keeps_the_rollups_exact(config: Config, store: Store) -> None:
    clock = [NOW - dt.timedelta(days=40)]
    intake = Intake(config, store.factory, router=IgnoreSpam(),
                    responder=AutoResponder(config), clock=lambda: clock[0])
    intake.sync_queues()
    numbers = []
    for i, ago in enumerate((dt.timedelta(days=40), dt.timedelta(days=3),
                             dt.timedelta(hours=2), dt.timedelta(minutes=1))):
        clock[0] = NOW - ago
        d = deliver(intake, message(f"Question {i}", sender=f"u{i}@dom{i % 2}.example"))
        numbers.append(d.ticket_number)
        deliver(intake, message(f"Re: [Ticket#{d.ticket_number}] Question {i}",
                                sender=f"u{i}@dom{i % 2}.example"))
        deliver(intake, message(f"robot {i}", extra=f"Auto-Submitted: auto-generated-{i}\r\n"))
        deliver(intake, message("Buy SPAM"))
    intake.record_size_rejected(10**9, Envelope("a@b.example", ("support@helpdesk.example",)))
    # The CLI and agents close, reopen and close again: domain-closed moves with closed_at.
    with store.engine.begin() as conn:
        closed = NOW - dt.timedelta(days=35)
        conn.execute(update(T).where(T.c.number == numbers[0])
                     .values(state="closed", closed_at=closed))
        conn.execute(update(T).where(T.c.number == numbers[1])
                     .values(state="closed", closed_at=NOW))
        conn.execute(update(T).where(T.c.number == numbers[1])
                     .values(state="open", closed_at=None))
        conn.execute(update(T).where(T.c.number == numbers[2])
                     .values(state="closed", closed_at=NOW))
    with store.factory() as s, s.begin():  # an ORM writer (as autoresponse/sent.py)
        s.add(Event(kind="autoresponse-sent", created_at=NOW, detail={}))

    with store.engine.connect() as conn:
        kept = counts(conn)
    assert kept == recount(store.engine)
    assert kept[("domain-closed", "2026-10", "dom0.example")] == 1
    assert kept[("domain-closed", "2026-11", "dom0.example")] == 1  # numbers[2]
    assert ("domain-closed", "2026-11", "dom1.example") not in kept  # reopened
    assert kept[("events", "", "created")] == 8  # robots open tickets too
    assert kept[("events", "", "ignored")] == 4
    assert kept[("suppressed", "", "auto-submitted")] == 4
    assert kept[("articles", "", "in")] == 12
    assert kept[("tickets", "", "")] == 8
    assert kept[("events", "2026-11-22 12", "created")] == 2
    # Unsigned mail checked by dkimpy (the default) is unverified.
    assert kept[("senders", "", "unverified")] == 12


def test_mail_with_a_sender_verdict_keeps_the_senders_rollups_exact(
    store: Store, tmp_path: Path, db_url: str
) -> None:
    """New tickets and follow-ups, verified, failed, unverified and not checked, over 40
    days: the trigger counts each incoming article under its verdict, as a recount does."""
    clock = [NOW]
    intake = verifying_intake(tmp_path, db_url, store, clock)
    for ago in (dt.timedelta(days=40), dt.timedelta(hours=2), dt.timedelta(minutes=1)):
        clock[0] = NOW - ago
        for i, (header, _) in enumerate(VERDICTS):
            d = deliver(intake, message(f"Verdict {i}", sender="v@dom0.example", extra=header))
            deliver(intake, message(f"Re: [Ticket#{d.ticket_number}] Verdict {i}",
                                    sender="v@dom0.example", extra=header))
    with store.engine.connect() as conn:
        kept = counts(conn)
        senders = {key: conn.scalar(select(func.count()).where(
            A.c.direction == "in", A.c.verdict_source != "off",
            *([A.c.aligned] if key == "aligned" else [A.c.aligned_failed]
              if key == "aligned_failed" else [~A.c.aligned, ~A.c.aligned_failed])))
            for key in rollups.SENDER_KEYS}
    assert kept == recount(store.engine)
    assert kept[("articles", "", "in")] == 30
    assert senders == {"aligned": 6, "aligned_failed": 6, "unverified": 12}  # 6 not checked
    assert {k: n for (s, b, k), n in kept.items() if s == "senders" and b == ""} == senders
    assert kept[("senders", "2026-11-22 12", "aligned")] == 2
    assert kept[("senders", "2026-11-22 10", "aligned_failed")] == 2
    assert kept[("senders", "2026-11-22 12", "unverified")] == 4


def _events_at(engine: Engine, times: list[dt.datetime]) -> None:
    with engine.begin() as conn:
        conn.execute(Event.__table__.insert(),
                     [{"kind": "created", "detail": {}, "created_at": t} for t in times])


def test_windows_are_exact_at_their_edges(store: Store) -> None:
    """Whole hours come from the rollups, the window's first partial hour from the rows."""
    second = dt.timedelta(seconds=1)
    hour, day, month = dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(days=30)
    _events_at(store.engine, [
        NOW - hour + second, NOW - hour - second,    # in / out of the last hour
        NOW - day + second, NOW - day - second,      # in / out of the last 24 h
        NOW - month + second, NOW - month - second,  # in / out of the last 30 days
        NOW - dt.timedelta(minutes=30),              # a whole-hour bucket inside every window
    ])
    with read_only(store.engine) as conn:
        got = windowed(conn, "events", NOW, ("created", "follow-up"))
    assert got["created"] == {"hour": 2, "day": 4, "month": 6}
    assert got["follow-up"] == {"hour": 0, "day": 0, "month": 0}


def scanned_senders(conn: Connection, now: dt.datetime) -> dict[str, dict[str, int]]:
    """The `senders` figure counted over the stored articles, as the status page did
    before the rollups: the definition the rollups must keep."""
    kinds = {"aligned": A.c.aligned, "aligned_failed": A.c.aligned_failed,
             "unverified": (A.c.verdict_source != "off") & ~A.c.aligned & ~A.c.aligned_failed}
    windows = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1),
               "month": dt.timedelta(days=30)}
    out = {}
    for kind, cond in kinds.items():
        cols = [func.sum(case((A.c.created_at >= now - delta, 1), else_=0)).label(name)
                for name, delta in windows.items()]
        row = conn.execute(select(*cols).where(A.c.direction == "in", cond)).one()
        out[kind] = {name: int(getattr(row, name) or 0) for name in windows}
    return out


def test_sender_windows_are_the_stored_verdicts_at_their_edges(
    store: Store, tmp_path: Path, db_url: str
) -> None:
    """Whole hours from the rollups, the first partial hour from the articles: the same
    figure as counting every incoming article of the window."""
    clock = [NOW]
    intake = verifying_intake(tmp_path, db_url, store, clock)
    second = dt.timedelta(seconds=1)
    hour, day, month = dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(days=30)
    edges = [hour - second, hour + second, day - second, day + second, month - second,
             month + second, dt.timedelta(minutes=30), dt.timedelta(days=3, minutes=7)]
    for n, ago in enumerate(edges):
        clock[0] = NOW - ago
        for i, (header, _) in enumerate(VERDICTS[n % 2:]):  # every kind, varied per edge
            deliver(intake, message(f"Edge {n}.{i}", sender="e@dom0.example", extra=header))
    with read_only(store.engine) as conn:
        got = windowed(conn, "senders", NOW, rollups.SENDER_KEYS)
        expected = scanned_senders(conn, NOW)
    assert got == expected
    assert got["aligned"] == {"hour": 2, "day": 3, "month": 4}  # edges 0, 6; 2; 4
    assert got["unverified"]["month"] > got["aligned_failed"]["month"] > 0


def test_the_migration_counts_the_mail_already_stored(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = make_engine(url)
    try:
        upgrade(engine, "0003_outbox_answer")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO queues (name, created_at) VALUES ('Support', :t)"),
                         {"t": NOW})
            for i, (created, closed) in enumerate([
                    (NOW - dt.timedelta(days=45), NOW - dt.timedelta(days=44)),
                    (NOW - dt.timedelta(hours=5), None)]):
                conn.execute(text(
                    "INSERT INTO tickets (number, title, queue_id, state, priority, "
                    "customer_address, customer_name, customer_domain, customer_id, tags, "
                    "created_at, updated_at, closed_at) VALUES (:n, 't', 1, 'open', 3, "
                    "'a@old.example', '', 'old.example', '', '[]', :c, :c, :x)"),
                    {"n": f"2026{i}", "c": created, "x": closed})
            detail = ":d" if backend == "sqlite" else "CAST(:d AS JSON)"
            conn.execute(text(f"INSERT INTO events (kind, detail, created_at) "
                              f"VALUES (:k, {detail}, :t)"), [
                {"k": "created", "d": "{}", "t": NOW - dt.timedelta(hours=5)},
                {"k": "autoresponse-suppressed", "t": NOW - dt.timedelta(hours=5),
                 "d": '{"check": "list", "reason": "list: List-Id <x.example>"}'},
            ])
        upgrade(engine)
        with engine.connect() as conn:
            kept = counts(conn)
        hour = (NOW - dt.timedelta(hours=5)).strftime("%Y-%m-%d %H")
        assert kept[("tickets", "", "")] == 2
        assert kept[("tickets", hour, "")] == 1
        assert kept[("domain-created", "2026-10", "old.example")] == 1
        assert kept[("domain-closed", "2026-10", "old.example")] == 1
        assert kept[("domain-created", "2026-11", "old.example")] == 1
        assert kept[("events", hour, "created")] == 1
        assert kept[("suppressed", hour, "list")] == 1
        assert kept == recount(engine)
    finally:
        engine.dispose()


def _article(ticket_id: int, n: int, verdict: dict[str, Any]) -> dict[str, Any]:
    return {"ticket_id": ticket_id, "direction": "in", "kind": "email",
            "message_id": f"m{n}@old.example", "content_hash": f"{n:064d}", "in_reply_to": "",
            "references": "", "from_address": "a@old.example", "from_name": "", "to": "",
            "cc": "", "subject": "s", "body_text": "", "body_html": "", "raw": b"x", "size": 1,
            "envelope_sender": "", "envelope_recipients": [], "classification": [],
            "created_at": NOW - dt.timedelta(hours=5, minutes=n), "dkim": "none",
            "aligned": False, "dmarc": "none", "aligned_failed": False, "verdict_source": "off",
            "from_stranger": False, **verdict}


def _migrate(engine: Engine, step: Any, revision: str) -> None:
    """command.upgrade / command.downgrade on `engine`, as ticketstore.db.upgrade runs it."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        step(cfg, revision)


def test_the_senders_migration_counts_the_verdicts_already_stored(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """A database at 0009 (verdicts stored, counted on each request) gets the senders
    trigger and its counts from 0011_senders; going back takes both out again."""
    from alembic import command

    url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = make_engine(url)
    aligned = {"dkim": "pass", "aligned": True, "dmarc": "pass", "verdict_source": "dkimpy"}
    failed = {"dkim": "fail", "dmarc": "fail", "aligned_failed": True, "verdict_source": "dkimpy"}
    checked = {"dkim": "none", "verdict_source": "authres:mx.helpdesk.example"}
    try:
        upgrade(engine, "0009_answer_limits")
        with engine.begin() as conn:
            # As `db upgrade` left it when 0009 was the head: triggers back, no senders.
            rollups.install(conn, senders=False)
            conn.execute(text("INSERT INTO queues (name, created_at) VALUES ('Support', :t)"),
                         {"t": NOW})
            conn.execute(T.insert(), {"number": "20261", "title": "t", "queue_id": 1,
                                      "customer_address": "a@old.example",
                                      "customer_domain": "old.example", "created_at": NOW})
            tid = conn.scalar(select(T.c.id))
            conn.execute(A.insert(), [_article(tid, n, v) for n, v in enumerate(
                [aligned, failed, failed, checked, checked, checked, {}])])
            assert not conn.scalar(select(func.count()).where(R.c.series == "senders"))
        upgrade(engine)
        with engine.connect() as conn:
            kept = counts(conn)
        hour = (NOW - dt.timedelta(hours=5)).strftime("%Y-%m-%d %H")
        assert {k: n for (s, b, k), n in kept.items() if s == "senders" and b == hour} == {
            "aligned": 1, "aligned_failed": 2, "unverified": 3}
        assert kept[("articles", hour, "in")] == 7
        assert kept == recount(engine)
        with engine.begin() as conn:  # the trigger counts what comes next
            conn.execute(A.insert(), _article(tid, 7, aligned))
        with read_only(engine) as conn:
            assert windowed(conn, "senders", NOW, ("aligned",))["aligned"]["day"] == 2

        _migrate(engine, command.downgrade, "0009_answer_limits")
        with engine.begin() as conn:
            conn.execute(A.insert(), _article(tid, 8, aligned))
            kept = counts(conn)
        assert not [k for k in kept if k[0] == "senders"]
        assert kept[("articles", "", "in")] == 9
        # Below 0007 the articles have no verdict; the trigger must not read one.
        _migrate(engine, command.downgrade, "0006_rollups")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO articles (ticket_id, direction, kind, message_id, content_hash, "
                "in_reply_to, \"references\", from_address, from_name, \"to\", cc, subject, "
                "body_text, body_html, raw, size, envelope_sender, envelope_recipients, "
                "classification, created_at) VALUES (:t, 'in', 'email', 'late@old.example', "
                "'h', '', '', '', '', '', '', '', '', '', :raw, 1, '', '[]', '[]', :c)"),
                {"t": tid, "raw": b"x", "c": NOW})
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_postgresql_writers_never_wait_for_each_others_rollup_rows(pg_databases: Any) -> None:
    """Two open transactions count the same kind in the same hour: the second must not
    wait for the first's row lock (a shared counter row would serialise every writer)."""
    engine = make_engine(pg_databases.migrated())
    try:
        with engine.connect() as first, engine.connect() as second:
            first.begin()
            _insert_created(first)
            second.begin()
            second.execute(text("SET LOCAL lock_timeout = '2s'"))
            _insert_created(second)  # raises LockNotAvailable if it had to wait
            second.commit()
            first.commit()
        with engine.connect() as conn:
            shards = conn.execute(select(R.c.shard, R.c.n).where(
                R.c.series == "events", R.c.key == "created", R.c.bucket == "")).all()
        assert sorted(n for _, n in shards) == [1, 1]
        assert len({s for s, _ in shards}) == 2
    finally:
        engine.dispose()


def _insert_created(conn: Connection) -> None:
    conn.execute(Event.__table__.insert(), {"kind": "created", "detail": {}, "created_at": NOW})
