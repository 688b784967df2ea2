"""The LMTP/SMTP listeners against a real server and a real smtplib client.

What is checked here is what Postfix relies on: one reply per accepted recipient
(RFC 2033), 550 5.1.1 at RCPT for unknown recipients in strict mode, SIZE advertised
and enforced with 552 5.3.4, and 451 4.3.0 without detail for any failure. Every test
runs against both session engines (`[lmtp] engine`), so they cannot drift apart.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from gateway.config import ENGINES
from gateway.intake.core import Intake
from gateway.spool import entries
from tests.test_server_app import MESSAGE, RunningDaemon, daemon_config
from ticketstore.db import make_engine, upgrade
from ticketstore.models import Article, Event, Ticket


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def running(tmp_path: Path, db_url: str, engine: str) -> Iterator[RunningDaemon]:
    if db_url.startswith("postgresql"):
        db = make_engine(db_url)
        upgrade(db)
        db.dispose()
    d = RunningDaemon(daemon_config(tmp_path, db_url, lmtp={"engine": engine})).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def sqlite_daemon(tmp_path: Path, sqlite_url: str, engine: str) -> Iterator[RunningDaemon]:
    d = RunningDaemon(daemon_config(tmp_path, sqlite_url, smtp={"listen": ["127.0.0.1:0"]},
                                    lmtp={"engine": engine},
                                    intake={"max_message_size": 64 * 1024})).start()
    try:
        yield d
    finally:
        d.stop()


def _send(client: smtplib.LMTP, rcpts: list[str], body: bytes) -> list[tuple[int, bytes]]:
    """MAIL, RCPT..., DATA, then read one reply per accepted recipient."""
    assert client.mail("alice@customer.example")[0] == 250
    accepted = [r for r in rcpts if client.rcpt(r)[0] == 250]
    client.putcmd("data")
    assert client.getreply()[0] == 354
    from gateway.handoff import lmtp_payload

    client.send(lmtp_payload(body))
    return [client.getreply() for _ in accepted]


def test_one_message_to_three_of_our_addresses_makes_one_ticket_and_three_replies(
    running: RunningDaemon,
) -> None:
    client = running.lmtp()
    got = _send(client, ["support@helpdesk.example", "billing@helpdesk.example",
                         "other@helpdesk.example"], MESSAGE)
    # The connection must be in sync afterwards: a NOOP gets its own reply.
    assert client.noop()[0] == 250
    client.quit()
    assert [code for code, _ in got] == [250, 250, 250]
    assert len({text for _, text in got}) == 1
    assert running.count(Ticket) == 1
    with running.ctx.store.factory() as session:
        ticket = session.scalars(select(Ticket)).one()
        assert ticket.queue.name == "Support", "queue of the first matching recipient"


def test_retry_of_a_stored_message_is_acknowledged_without_a_second_ticket(
    sqlite_daemon: RunningDaemon,
) -> None:
    for _ in range(2):
        client = sqlite_daemon.lmtp()
        ((code, text),) = _send(client, ["support@helpdesk.example"], MESSAGE)
        client.quit()
        assert code == 250
    assert b"duplicate" in text
    with sqlite_daemon.ctx.store.factory() as session:
        inbound = session.scalars(select(Article).where(Article.direction == "in")).all()
    assert len(inbound) == 1


def test_strict_recipients_are_refused_at_rcpt(tmp_path: Path, sqlite_url: str) -> None:
    d = RunningDaemon(daemon_config(tmp_path, sqlite_url,
                                    intake={"strict_recipients": True})).start()
    try:
        client = d.lmtp()
        client.mail("alice@customer.example")
        code, text = client.rcpt("nobody@helpdesk.example")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("support@helpdesk.example")[0] == 250
        code, text = client.data(MESSAGE)
        client.quit()
        assert code == 250
    finally:
        d.stop()


def test_size_is_advertised_and_a_declared_oversize_refused_at_mail(
    sqlite_daemon: RunningDaemon,
) -> None:
    client = sqlite_daemon.lmtp()
    assert client.esmtp_features["size"] == str(64 * 1024)
    code, text = client.mail("alice@customer.example", [f"SIZE={10**6}"])
    assert (code, text[:5]) == (552, b"5.3.4")
    client.quit()
    with sqlite_daemon.ctx.store.factory() as session:
        event = session.scalars(select(Event).where(Event.kind == "size-rejected")).one()
    assert event.detail["size"] == 10**6


def test_oversize_data_gets_552_per_recipient_and_a_recorded_event(
    sqlite_daemon: RunningDaemon,
) -> None:
    client = sqlite_daemon.lmtp()
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 2000  # ~144 KB against a 64 KiB limit
    got = _send(client, ["support@helpdesk.example", "billing@helpdesk.example"], big)
    assert [(c, t[:5]) for c, t in got] == [(552, b"5.3.4")] * 2
    # Still in sync, and a normal message on the same connection works.
    ((code, _),) = _send(client, ["support@helpdesk.example"], MESSAGE)
    client.quit()
    assert code == 250
    with sqlite_daemon.ctx.store.factory() as session:
        event = session.scalars(select(Event).where(Event.kind == "size-rejected")).one()
    assert event.detail["size"] > 64 * 1024
    assert event.detail["rcpt_to"] == ["support@helpdesk.example", "billing@helpdesk.example"]


def test_raw_bytes_survive_dot_stuffing_long_lines_and_8bit(
    sqlite_daemon: RunningDaemon,
) -> None:
    body = (b"From: a@customer.example\r\nSubject: dots\r\nMessage-ID: <dots@x>\r\n\r\n"
            b".leading dot\r\n..two dots\r\n" + b"L" * 5000 + b"\r\n"
            + b"8bit: \xc3\xa4\xff\r\nlast line")
    client = sqlite_daemon.lmtp()
    ((code, _),) = _send(client, ["support@helpdesk.example"], body)
    client.quit()
    assert code == 250
    with sqlite_daemon.ctx.store.factory() as session:
        raw = session.scalars(select(Article.raw).where(Article.direction == "in")).one()
    assert raw == body + b"\r\n"


def test_smtp_listener_answers_once(sqlite_daemon: RunningDaemon) -> None:
    assert sqlite_daemon.daemon is not None
    smtp_port = [n[1] for n in sqlite_daemon.daemon.bound() if isinstance(n, tuple)][1]
    with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="localhost", timeout=10) as s:
        refused = s.sendmail("alice@customer.example",
                             ["support@helpdesk.example", "billing@helpdesk.example"], MESSAGE)
        assert refused == {}
        assert s.noop()[0] == 250
    assert sqlite_daemon.count(Ticket) == 1


class _BuggyIntake(Intake):
    def prepare(self, raw: bytes, envelope: Any) -> Any:
        raise RuntimeError("secret internal detail")


class _LockedIntake(Intake):
    def store(self, session: Any, p: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is locked"))


def test_a_bug_answers_451_without_detail_and_quarantines(
    sqlite_daemon: RunningDaemon,
) -> None:
    ctx = sqlite_daemon.ctx
    ctx.intake = _BuggyIntake(ctx.config, ctx.store.factory)
    client = sqlite_daemon.lmtp()
    got = _send(client, ["support@helpdesk.example", "billing@helpdesk.example"], MESSAGE)
    client.quit()
    assert [(c, t[:5]) for c, t in got] == [(451, b"4.3.0")] * 2
    assert all(b"secret" not in t and b"RuntimeError" not in t for _, t in got)
    spooled = entries(ctx.config.path(ctx.config.intake.spool_dir))
    assert len(spooled) == 1
    raw, envelope, meta = spooled[0].read()
    assert raw == MESSAGE and "secret internal detail" in str(meta["error"])
    assert envelope.rcpt_tos == ("support@helpdesk.example", "billing@helpdesk.example")


def test_a_locked_database_answers_451_and_quarantines_nothing(
    sqlite_daemon: RunningDaemon,
) -> None:
    ctx = sqlite_daemon.ctx
    ctx.intake = _LockedIntake(ctx.config, ctx.store.factory)
    client = sqlite_daemon.lmtp()
    ((code, text),) = _send(client, ["support@helpdesk.example"], MESSAGE)
    client.quit()
    assert (code, text[:5]) == (451, b"4.3.0")
    assert entries(ctx.config.path(ctx.config.intake.spool_dir)) == []
    assert sqlite_daemon.count(Ticket) == 0


def test_an_exception_in_a_session_hook_is_451_not_aiosmtpds_500(
    sqlite_daemon: RunningDaemon,
) -> None:
    class Exploding(Intake):
        def recipient_accepted(self, address: str) -> bool:
            raise KeyError("boom")

    ctx = sqlite_daemon.ctx
    ctx.intake = Exploding(ctx.config, ctx.store.factory)
    client = sqlite_daemon.lmtp()
    client.mail("alice@customer.example")
    code, text = client.rcpt("support@helpdesk.example")
    client.quit()
    assert (code, text[:5]) == (451, b"4.3.0")
    assert b"boom" not in text and b"KeyError" not in text


def test_client_disconnecting_in_data_leaves_the_server_healthy(
    sqlite_daemon: RunningDaemon,
) -> None:
    client = sqlite_daemon.lmtp()
    client.mail("alice@customer.example")
    client.rcpt("support@helpdesk.example")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(MESSAGE[:30])
    client.close()
    client = sqlite_daemon.lmtp()
    ((code, _),) = _send(client, ["support@helpdesk.example"], MESSAGE)
    client.quit()
    assert code == 250
    assert sqlite_daemon.count(Ticket) == 1


def test_a_large_message_parsed_in_a_worker_thread_is_stored(running: RunningDaemon) -> None:
    from gateway.server.handler import INLINE_PREPARE_MAX

    body = MESSAGE + (b"y" * 76 + b"\r\n") * (INLINE_PREPARE_MAX // 78 + 100)
    assert len(body) > INLINE_PREPARE_MAX
    client = running.lmtp()
    ((code, _),) = _send(client, ["support@helpdesk.example"], body)
    client.quit()
    assert code == 250
    with running.ctx.store.factory() as session:
        size = session.scalars(select(Article.size).where(Article.direction == "in")).one()
    assert size == len(body)
