"""Outbox delivery against a real aiosmtpd smarthost: once, retried, failed, recovered."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from autoresponse.outbox import Outbox, backoff
from gateway.cli import main as cli_main
from gateway.config import Config
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import SmtpSink, answering_intake, build_mail, write_toml
from tests.support import DEFAULT_QUEUES, make_config
from ticketstore.models import Event, OutboxMessage

CUSTOMER = "ana@customer.example"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def _config(tmp_path: Path, db_url: str, sink: SmtpSink, **outbound: object) -> Config:
    return make_config(tmp_path, db_url,
                       outbound={"smarthost": sink.smarthost, "timeout": 5.0, **outbound})


@pytest.fixture
def ob_store(tmp_path: Path, db_url: str) -> Iterator[Store]:
    from ticketstore.db import upgrade

    s = open_store(make_config(tmp_path, db_url), create=False)
    upgrade(s.engine)
    yield s
    s.dispose()


def _tickets(config: Config, store: Store, n: int, start: int = 0) -> None:
    intake = answering_intake(config, store)
    for i in range(start, start + n):
        intake.process(build_mail(subject=f"question {i}", message_id=f"q{i}@customer.example",
                                  sender=f"c{i}@customer.example"),
                       Envelope(f"c{i}@customer.example", ("support@helpdesk.example",)))


def _rows(store: Store) -> list[OutboxMessage]:
    with store.factory() as s:
        return list(s.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars())


def _write_cli_config(tmp_path: Path, config: Config) -> str:
    path = tmp_path / "cli.toml"
    o = config.outbound
    write_toml(path, {
        "database": {"url": config.database.url},
        "templates": {"dir": str(tmp_path / "templates")},
        "pipe": {"handoff_socket": ""},
        "outbound": {"smarthost": o.smarthost, "retry_base": o.retry_base,
                     "max_attempts": o.max_attempts, "timeout": o.timeout},
        "queues": DEFAULT_QUEUES,
    })
    return str(path)


def test_smarthost_down_then_up_delivers_everything_once(
    tmp_path: Path, db_url: str, sink: SmtpSink, ob_store: Store,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(tmp_path, db_url, sink, retry_base=0.0)
    cfg_file = _write_cli_config(tmp_path, config)
    _tickets(config, ob_store, 3)
    sink.stop()
    assert cli_main(["-c", cfg_file, "outbox", "send"]) == 0  # nothing lost, retry later
    assert "retry later 3" in capsys.readouterr().out
    assert sink.received == []
    rows = _rows(ob_store)
    assert [r.state for r in rows] == ["pending"] * 3
    assert all(r.attempts == 1 and "connect" in r.last_error for r in rows)
    _tickets(config, ob_store, 2, start=3)  # more mail while the smarthost is down
    assert cli_main(["-c", cfg_file, "outbox", "send"]) == 0
    sink.start()
    assert cli_main(["-c", cfg_file, "outbox", "send"]) == 0
    assert cli_main(["-c", cfg_file, "outbox", "send"]) == 0
    got = sorted(r.rcpt_tos[0] for r in sink.received)
    assert got == sorted(f"c{i}@customer.example" for i in range(5))
    assert [r.state for r in _rows(ob_store)] == ["sent"] * 5
    capsys.readouterr()
    assert cli_main(["-c", cfg_file, "outbox", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["state"] for r in listed} == {"sent"} and len(listed) == 5


def test_5xx_fails_with_the_reply_and_is_not_retried(
    tmp_path: Path, db_url: str, sink: SmtpSink, ob_store: Store
) -> None:
    config = _config(tmp_path, db_url, sink, retry_base=0.0)
    _tickets(config, ob_store, 1)
    sink.set_reply("550 5.1.1 mailbox unavailable")
    res = Outbox(config, ob_store.factory).run_until_idle()
    assert (res.sent, res.failed) == (0, 1)
    [row] = _rows(ob_store)
    assert row.state == "failed" and "550" in row.last_error and "mailbox" in row.last_error
    sink.set_reply("250 OK")
    assert Outbox(config, ob_store.factory).run_until_idle().sent == 0
    assert sink.received == []
    with ob_store.factory() as s:
        event = s.execute(select(Event).where(Event.kind == "outbox-failed")).scalar_one()
        assert event.ticket_id == row.ticket_id
    # An admin fixes the cause and retries it.
    assert Outbox(config, ob_store.factory).retry(row.id)
    assert Outbox(config, ob_store.factory).run_until_idle().sent == 1
    assert len(sink.received) == 1


def test_4xx_backs_off_exponentially_then_gives_up(
    tmp_path: Path, db_url: str, sink: SmtpSink, ob_store: Store
) -> None:
    # After the rows' real creation time (the intake's clock), or nothing is ever due.
    now = [dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)]
    config = _config(tmp_path, db_url, sink, retry_base=60.0, retry_max=200.0, max_attempts=4)
    _tickets(config, ob_store, 1)
    sink.set_reply("451 4.3.0 try later")
    outbox = Outbox(config, ob_store.factory, clock=lambda: now[0])
    waits = []
    for _ in range(4):
        res = outbox.deliver_due()
        [row] = _rows(ob_store)
        if row.state == "failed":
            break
        assert res.retried == 1 and row.state == "pending" and "451" in row.last_error
        wait = row.next_attempt_at - now[0]
        waits.append(wait.total_seconds())
        now[0] += wait - dt.timedelta(seconds=1)
        assert outbox.deliver_due().retried == 0  # not due yet
        now[0] += dt.timedelta(seconds=1)
    assert waits == [60.0, 120.0, 200.0]
    [row] = _rows(ob_store)
    assert row.state == "failed" and row.attempts == 4 and "gave up" in row.last_error
    assert sink.received == []


def test_backoff_formula() -> None:
    assert [backoff(n, 10, 100) for n in range(1, 6)] == [10, 20, 40, 80, 100]


def test_sending_row_of_a_crashed_worker_is_recovered_after_the_lease(
    tmp_path: Path, db_url: str, sink: SmtpSink, ob_store: Store
) -> None:
    # After the rows' real creation time (the intake's clock), or nothing is ever due.
    now = [dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)]
    config = _config(tmp_path, db_url, sink)
    _tickets(config, ob_store, 1)
    crashed = Outbox(config, ob_store.factory, clock=lambda: now[0])
    assert len(crashed.claim()) == 1  # ... and the process dies before sending
    other = Outbox(config, ob_store.factory, clock=lambda: now[0])
    now[0] += dt.timedelta(seconds=30)
    assert other.deliver_due().sent == 0  # still leased: no double send
    now[0] += other.lease
    assert other.deliver_due().sent == 1
    assert other.deliver_due().sent == 0
    assert len(sink.received) == 1
    [row] = _rows(ob_store)
    assert (row.state, row.attempts) == ("sent", 2)


def test_concurrent_workers_send_each_message_once(
    tmp_path: Path, db_url: str, sink: SmtpSink, ob_store: Store
) -> None:
    config = _config(tmp_path, db_url, sink)
    _tickets(config, ob_store, 24)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(10)
            outbox = Outbox(config, ob_store.factory)
            for _ in range(30):
                outbox.deliver_due(limit=2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = [r.message.get("Message-ID") for r in sink.received]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert {r.state for r in _rows(ob_store)} == {"sent"}


def test_auth_with_password_file_never_logs_the_password(
    tmp_path: Path, db_url: str, ob_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Pa55"
    (tmp_path / "smtp.pass").write_text(secret + "\n")
    caplog.set_level(logging.DEBUG)
    with SmtpSink(credentials=("tg", secret)) as sink:
        config = _config(tmp_path, db_url, sink, username="tg", password_file="smtp.pass")
        _tickets(config, ob_store, 1)
        assert Outbox(config, ob_store.factory).run_until_idle().sent == 1
        assert sink.auth_seen == ["tg"] and len(sink.received) == 1
        # A wrong password is an admin's mistake: retried, never failed, never logged.
        (tmp_path / "smtp.pass").write_text("wrong-" + secret)
        _tickets(config, ob_store, 1, start=1)
        res = Outbox(config, ob_store.factory).run_until_idle()
        assert (res.sent, res.retried) == (0, 1)
    assert secret not in caplog.text
    assert all(secret not in r.last_error for r in _rows(ob_store))


def test_starttls_required_but_not_offered_sends_nothing(
    tmp_path: Path, db_url: str, sink: SmtpSink, ob_store: Store
) -> None:
    config = _config(tmp_path, db_url, sink, starttls=True)
    _tickets(config, ob_store, 1)
    res = Outbox(config, ob_store.factory).run_until_idle()
    assert (res.sent, res.retried) == (0, 1)
    assert sink.received == []
    assert "STARTTLS" in _rows(ob_store)[0].last_error or "starttls" in \
        _rows(ob_store)[0].last_error.lower()


def test_worker_service_delivers_and_stops(
    tmp_path: Path, db_url: str, sink: SmtpSink, ob_store: Store
) -> None:
    from autoresponse import worker
    from gateway.daemon import SERVICES, DaemonContext

    assert "autoresponse.worker:run" in SERVICES
    config = _config(tmp_path, db_url, sink)
    _tickets(config, ob_store, 2)
    ctx = DaemonContext(config=config, store=ob_store,
                        intake=Intake(config, ob_store.factory))

    async def scenario() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(ctx, stopping, poll_interval=0.05))
        for _ in range(200):
            if len(sink.received) == 2:
                break
            await asyncio.sleep(0.05)
        sink.stop()  # now a delivery failure must show up as an error, not kill the worker
        _tickets(config, ob_store, 1, start=2)
        for _ in range(200):
            if ctx.errors:
                break
            await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert len(sink.received) == 2
    assert ctx.counters["outbox_sent"] == 2
    assert ctx.errors and ctx.errors[0].source == "outbox"


def test_retry_cli_and_unknown_id(tmp_path: Path, db_url: str, sink: SmtpSink,
                                  ob_store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, db_url, sink)
    cfg_file = _write_cli_config(tmp_path, config)
    _tickets(config, ob_store, 1)
    sink.set_reply("554 5.7.1 rejected")
    assert cli_main(["-c", cfg_file, "outbox", "send"]) == 0
    [row] = _rows(ob_store)
    assert row.state == "failed"
    capsys.readouterr()
    assert cli_main(["-c", cfg_file, "outbox", "list", "--state", "pending"]) == 0
    assert capsys.readouterr().out == "outbox is empty (state pending)\n"
    assert cli_main(["-c", cfg_file, "outbox", "list", "--state", "failed"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ID", "STATE", "TRY", "TICKET", "KIND", "RECIPIENT"]
    assert "554" in out
    assert cli_main(["-c", cfg_file, "outbox", "retry", "999"]) == 1
    sink.set_reply("250 OK")
    assert cli_main(["-c", cfg_file, "outbox", "retry", str(row.id)]) == 0
    assert cli_main(["-c", cfg_file, "outbox", "send"]) == 0
    assert len(sink.received) == 1


def test_batches_are_marked_sent_in_groups(tmp_path: Path, sqlite_url: str,
                                           sink: SmtpSink) -> None:
    from autoresponse.outbox import BATCH

    config = _config(tmp_path, sqlite_url, sink)
    store = open_store(config)
    try:
        _tickets(config, store, BATCH + 5)
        outbox = Outbox(config, store.factory)
        assert outbox.deliver_due().sent == BATCH
        states = [r.state for r in _rows(store)]
        assert states.count("sent") == BATCH and states.count("pending") == 5
        assert outbox.deliver_due().sent == 5
        assert outbox.deliver_due().sent == 0
        assert len(sink.received) == BATCH + 5
    finally:
        store.dispose()


def test_outbox_writes_take_turns_with_the_intake_writers(tmp_path: Path, sqlite_url: str,
                                                          sink: SmtpSink) -> None:
    """A writer holding the worker processes' lock file makes the outbox wait for it,
    instead of the lock's holder waiting in SQLite's busy handler for the outbox."""
    from ticketstore.writelock import writer_lock_for

    config = _config(tmp_path, sqlite_url, sink)
    store = open_store(config)
    try:
        _tickets(config, store, 1)
        held = writer_lock_for(store.engine)
        assert held is not None
        done = threading.Event()
        with held:
            worker = threading.Thread(
                target=lambda: (Outbox(config, store.factory).run_until_idle(), done.set()))
            worker.start()
            assert not done.wait(0.5)  # the claim waits for the lock
        assert done.wait(10)
        worker.join(10)
        assert len(sink.received) == 1
        held.close()
    finally:
        store.dispose()
