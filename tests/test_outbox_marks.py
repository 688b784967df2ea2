"""The outbox after a failed "sent" mark: kept, written when the database is back, never
sent twice; and its lease, a setting of its own.

A real aiosmtpd smarthost takes the mail; the database refuses the transaction that
marks the rows sent (a trigger, or a private PostgreSQL cluster stopped right after
the smarthost's 250).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from autoresponse.outbox import Outbox, SmtpSender
from autoresponse.sentmarks import FOLDER
from gateway.config import Config, ConfigError
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import SmtpSink, answering_intake, build_mail
from tests.pgcluster_helpers import private_cluster
from tests.support import make_config
from ticketstore.db import upgrade
from ticketstore.models import Article, Event, OutboxMessage


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def _store(tmp_path: Path, url: str, sink: SmtpSink, **outbound: object,
           ) -> tuple[Config, Store]:
    config = make_config(tmp_path, url,
                         outbound={"smarthost": sink.smarthost, "timeout": 5.0, **outbound})
    store = open_store(config, create=False)
    upgrade(store.engine)
    return config, store


def _answers(config: Config, store: Store, n: int) -> None:
    """`n` new tickets, each answered through the outbox."""
    intake = answering_intake(config, store)
    for i in range(n):
        intake.process(build_mail(subject=f"question {i}", message_id=f"q{i}@customer.example",
                                  sender=f"c{i}@customer.example"),
                       Envelope(f"c{i}@customer.example", ("support@helpdesk.example",)))


def _states(store: Store) -> list[str]:
    with store.factory() as s:
        return list(s.execute(select(OutboxMessage.state).order_by(OutboxMessage.id)).scalars())


def _recorded(store: Store) -> tuple[int, int]:
    """Outgoing articles and autoresponse-sent events."""
    with store.factory() as s:
        return (len(s.execute(select(Article.id).where(Article.direction == "out")).all()),
                len(s.execute(select(Event.id).where(Event.kind == "autoresponse-sent")).all()))


def _refuse_marks(engine: Engine, refuse: bool) -> None:
    """The database itself refuses to mark an outbox row sent (or does again)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_mark"))
            if refuse:
                conn.execute(text(
                    "CREATE TRIGGER refuse_mark BEFORE UPDATE OF state ON outbox "
                    "WHEN NEW.state = 'sent' BEGIN SELECT RAISE(ABORT, 'database away'); END"))
            return
        conn.execute(text("DROP TRIGGER IF EXISTS refuse_mark ON outbox"))
        if refuse:
            conn.execute(text(
                "CREATE OR REPLACE FUNCTION refuse_mark() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'database away' USING ERRCODE = '57P01'; END $$ "
                "LANGUAGE plpgsql"))
            conn.execute(text(
                "CREATE TRIGGER refuse_mark BEFORE UPDATE ON outbox FOR EACH ROW "
                "WHEN (NEW.state = 'sent') EXECUTE FUNCTION refuse_mark()"))


def test_a_refused_mark_is_kept_and_nothing_is_sent_twice(
        tmp_path: Path, db_url: str, sink: SmtpSink) -> None:
    config, store = _store(tmp_path, db_url, sink)
    try:
        _answers(config, store, 3)
        now = [dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)]
        _refuse_marks(store.engine, True)
        first = Outbox(config, store.factory, clock=lambda: now[0])
        with pytest.raises(Exception, match="database away"):
            first.deliver_due()
        assert len(sink.received) == 3 and _states(store) == ["sending"] * 3
        kept = tmp_path / "spool" / FOLDER
        assert len(list(kept.glob("*.json"))) == 3

        # The leases run out; a restarted worker (nothing in memory) finds the marks in
        # the spool and claims nothing while the database still refuses them.
        now[0] += first.lease + dt.timedelta(seconds=1)
        with pytest.raises(Exception, match="database away"):
            Outbox(config, store.factory, clock=lambda: now[0]).deliver_due()
        assert len(sink.received) == 3

        _refuse_marks(store.engine, False)
        outbox = Outbox(config, store.factory, clock=lambda: now[0])
        assert outbox.deliver_due().sent == 0
        assert outbox.deliver_due().sent == 0
        assert len(sink.received) == 3 and _states(store) == ["sent"] * 3
        assert _recorded(store) == (3, 3)
        assert list(kept.glob("*.json")) == []
    finally:
        store.dispose()


class _StopsTheDatabase:
    """The real SMTP sender; once the smarthost took the first message, the database
    goes down (a restart), before the outbox can mark anything sent."""

    def __init__(self, real: SmtpSender, stop: Callable[[], None]) -> None:
        self.real, self.stop = real, stop

    def send(self, mail_from: str, rcpt_to: str, data: bytes) -> None:
        self.real.send(mail_from, rcpt_to, data)
        if self.stop is not None:
            self.stop()
            self.stop = None  # type: ignore[assignment]

    def close(self) -> None:
        self.real.close()


def test_a_database_restart_after_the_smarthosts_250_sends_nothing_twice(
        tmp_path: Path, sink: SmtpSink) -> None:
    with private_cluster() as cluster:
        config, store = _store(tmp_path, cluster.url, sink, max_attempts=3)
        try:
            _answers(config, store, 2)
            now = [dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)]
            outbox = Outbox(config, store.factory, clock=lambda: now[0],
                            sender_factory=lambda: _StopsTheDatabase(SmtpSender(config),
                                                                     cluster.stop))
            with pytest.raises(Exception):  # noqa: B017 - whichever error the driver reports
                outbox.deliver_due()
            assert len(sink.received) == 2  # both claimed rows went out, neither is marked
            with pytest.raises(Exception):  # noqa: B017 - still down: nothing claimed
                outbox.deliver_due()
            cluster.start()
            now[0] += outbox.lease + dt.timedelta(seconds=1)  # the lease ran out
            for _ in range(3):
                outbox.deliver_due()
            assert len(sink.received) == 2, [r.rcpt_tos for r in sink.received]
            assert sorted(r.rcpt_tos[0] for r in sink.received) == [
                "c0@customer.example", "c1@customer.example"]
            assert _states(store) == ["sent", "sent"] and _recorded(store) == (2, 2)
        finally:
            store.dispose()


# -- the lease --------------------------------------------------------------------------

def test_the_lease_is_a_setting_and_claims_last_that_long(
        tmp_path: Path, sqlite_url: str, sink: SmtpSink) -> None:
    config, store = _store(tmp_path, sqlite_url, sink, lease=120.0)
    try:
        _answers(config, store, 1)
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
        assert len(Outbox(config, store.factory, clock=lambda: now).claim()) == 1
        with store.factory() as s:
            row = s.execute(select(OutboxMessage)).scalar_one()
        assert row.next_attempt_at == now + dt.timedelta(seconds=120)
    finally:
        store.dispose()


def test_a_worker_starts_no_send_its_lease_could_not_cover(
        tmp_path: Path, sqlite_url: str, sink: SmtpSink) -> None:
    config, store = _store(tmp_path, sqlite_url, sink, lease=60.0, timeout=20.0)
    try:
        _answers(config, store, 4)
        now = [dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)]

        class Slow:  # every send takes 25 s of the 60 s lease
            def __init__(self) -> None:
                self.real = SmtpSender(config)

            def send(self, mail_from: str, rcpt_to: str, data: bytes) -> None:
                self.real.send(mail_from, rcpt_to, data)
                now[0] += dt.timedelta(seconds=25)

            def close(self) -> None:
                self.real.close()

        outbox = Outbox(config, store.factory, clock=lambda: now[0], sender_factory=Slow)
        assert outbox.deliver_due().sent == 2  # at 50 s, 10 s are left: less than timeout
        assert _states(store) == ["sent", "sent", "pending", "pending"]
        with store.factory() as s:
            attempts = s.execute(select(OutboxMessage.attempts)
                                 .order_by(OutboxMessage.id)).scalars().all()
        assert attempts == [1, 1, 0, 0]
        assert outbox.deliver_due().sent == 2 and len(sink.received) == 4
    finally:
        store.dispose()


@pytest.mark.parametrize("lease", [30.0, 59.0])
def test_a_lease_shorter_than_a_minute_or_two_timeouts_is_refused(
        tmp_path: Path, lease: float) -> None:
    with pytest.raises(ConfigError, match=r"outbound\.lease"):
        make_config(tmp_path, "sqlite://", outbound={"lease": lease, "timeout": 30.0})
    with pytest.raises(ConfigError, match=r"outbound\.lease"):
        make_config(tmp_path, "sqlite://", outbound={"lease": 100.0, "timeout": 60.0})
