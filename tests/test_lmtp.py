"""The LMTP/SMTP listeners against a real server, with smtplib and a raw socket.

What is checked here is what Postfix relies on: one reply per accepted recipient
(RFC 2033), 550 5.1.1 at RCPT for unknown recipients in strict mode, SIZE advertised
and enforced with 552 5.3.4, 451 4.3.0 without detail for any failure, and what a
well-behaved server refuses (too many recipients, a null recipient, a sender that is
not UTF-8). A raw socket is used where smtplib cannot say it: pipelining, chunking,
bytes that are not UTF-8.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from gateway.intake.core import Intake
from gateway.server.handler import INLINE_PREPARE_MAX
from gateway.server.protocol import enhanced
from gateway.spool import entries
from tests.server_helpers import (
    MESSAGE,
    Raw,
    RunningDaemon,
    daemon_config,
    prepare_database,
    send,
)
from ticketstore.models import Article, Event, Ticket

SUPPORT = "support@helpdesk.example"
BILLING = "billing@helpdesk.example"


@pytest.fixture
def running(tmp_path: Path, db_url: str) -> Iterator[RunningDaemon]:
    prepare_database(db_url)
    d = RunningDaemon(daemon_config(tmp_path, db_url)).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def sqlite_daemon(tmp_path: Path, sqlite_url: str) -> Iterator[RunningDaemon]:
    d = RunningDaemon(daemon_config(tmp_path, sqlite_url, smtp={"listen": ["127.0.0.1:0"]},
                                    intake={"max_message_size": 64 * 1024})).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def raw(sqlite_daemon: RunningDaemon) -> Iterator[Raw]:
    client = Raw(sqlite_daemon.port)
    yield client
    client.close()


ENVELOPE = f"LHLO c\r\nMAIL FROM:<alice@customer.example>\r\nRCPT TO:<{SUPPORT}>\r\n".encode()


# -- delivery ----------------------------------------------------------------------------------


def test_one_message_to_three_of_our_addresses_makes_one_ticket_and_three_replies(
    running: RunningDaemon,
) -> None:
    client = running.lmtp()
    got = send(client, [SUPPORT, BILLING, "other@helpdesk.example"], MESSAGE)
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
        ((code, text),) = send(client, [SUPPORT], MESSAGE)
        client.quit()
        assert code == 250
    assert b"duplicate" in text
    with sqlite_daemon.ctx.store.factory() as session:
        inbound = session.scalars(select(Article).where(Article.direction == "in")).all()
    assert len(inbound) == 1


def test_raw_bytes_survive_dot_stuffing_long_lines_and_8bit(
    sqlite_daemon: RunningDaemon,
) -> None:
    """A line of 5000 octets breaks RFC 5321's 1000, but a malformed message is stored,
    not refused."""
    body = (b"From: a@customer.example\r\nSubject: dots\r\nMessage-ID: <dots@x>\r\n\r\n"
            b".leading dot\r\n..two dots\r\n" + b"L" * 5000 + b"\r\n"
            + b"8bit: \xc3\xa4\xff\r\nlast line")
    client = sqlite_daemon.lmtp()
    ((code, _),) = send(client, [SUPPORT], body)
    client.quit()
    assert code == 250
    with sqlite_daemon.ctx.store.factory() as session:
        raw = session.scalars(select(Article.raw).where(Article.direction == "in")).one()
    assert raw == body + b"\r\n"


def test_a_message_split_into_odd_packets_arrives_whole(
    sqlite_daemon: RunningDaemon, raw: Raw,
) -> None:
    """Dot lines, a terminator split across packets, and a command right behind it."""
    message = (b"From: a@customer.example\r\nMessage-ID: <chunks@x>\r\n\r\n.\r\n..\r\n"
               b".x\r\na.\r\n\r\n")
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    raw.send(ENVELOPE + b"DATA\r\n")
    assert [r[:3] for r in raw.replies(4)] == ["250", "250", "250", "354"]
    stream = stuffed + b".\r\nNOOP\r\n"
    for i in range(0, len(stream), 3):
        raw.send(stream[i:i + 3])
    assert [r[:3] for r in raw.replies(2)] == ["250", "250"]
    with sqlite_daemon.ctx.store.factory() as session:
        stored = session.scalars(select(Article.raw).where(Article.direction == "in")).one()
    assert stored == message


def test_a_source_routed_sender_is_stored_without_the_route(
    sqlite_daemon: RunningDaemon, raw: Raw,
) -> None:
    """RFC 5321 C: a server may ignore the route; the mailbox is what counts."""
    raw.send(b"LHLO c\r\nMAIL FROM:<@relay.example:alice@customer.example>\r\n"
             + f"RCPT TO:<{SUPPORT}>\r\nDATA\r\n".encode())
    assert [r[:3] for r in raw.replies(4)] == ["250", "250", "250", "354"]
    raw.send(MESSAGE + b".\r\n")
    assert raw.replies(1)[0].startswith("250 2.0.0")
    with sqlite_daemon.ctx.store.factory() as session:
        sender = session.scalars(select(Article.envelope_sender)).one()
    assert sender == "alice@customer.example"


def test_an_empty_message_is_answered_and_the_session_goes_on(raw: Raw) -> None:
    raw.send(ENVELOPE + b"DATA\r\n.\r\nNOOP\r\n")
    got = raw.replies(6)
    assert got[3].startswith("354 ")
    assert got[4].startswith("250 2.0.0"), "stored like any malformed message"
    assert got[5].startswith("250 ")


def test_a_large_message_parsed_in_a_worker_thread_is_stored(running: RunningDaemon) -> None:
    body = MESSAGE + (b"y" * 76 + b"\r\n") * (INLINE_PREPARE_MAX // 78 + 100)
    assert len(body) > INLINE_PREPARE_MAX
    client = running.lmtp()
    ((code, _),) = send(client, [SUPPORT], body)
    client.quit()
    assert code == 250
    with running.ctx.store.factory() as session:
        size = session.scalars(select(Article.size).where(Article.direction == "in")).one()
    assert size == len(body)


def test_smtp_listener_answers_once(sqlite_daemon: RunningDaemon) -> None:
    assert sqlite_daemon.daemon is not None
    smtp_port = [n[1] for n in sqlite_daemon.daemon.bound() if isinstance(n, tuple)][1]
    with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="localhost", timeout=10) as s:
        refused = s.sendmail("alice@customer.example", [SUPPORT, BILLING], MESSAGE)
        assert refused == {}
        assert s.noop()[0] == 250
    assert sqlite_daemon.count(Ticket) == 1


def test_a_non_ascii_sender_is_accepted_with_smtputf8(sqlite_daemon: RunningDaemon) -> None:
    client = sqlite_daemon.lmtp()
    assert "smtputf8" in client.esmtp_features
    ((code, _),) = send(client, [SUPPORT], MESSAGE, sender="josé@customer.example")
    client.quit()
    assert code == 250


# -- what the server refuses -------------------------------------------------------------------


def test_strict_recipients_are_refused_at_rcpt(tmp_path: Path, sqlite_url: str) -> None:
    d = RunningDaemon(daemon_config(tmp_path, sqlite_url,
                                    intake={"strict_recipients": True})).start()
    try:
        client = d.lmtp()
        client.mail("alice@customer.example")
        code, text = client.rcpt("nobody@helpdesk.example")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt(SUPPORT)[0] == 250
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
    # Nothing was started: a smaller message goes through on the same connection.
    ((code, _),) = send(client, [SUPPORT], MESSAGE)
    client.quit()
    assert code == 250
    with sqlite_daemon.ctx.store.factory() as session:
        event = session.scalars(select(Event).where(Event.kind == "size-rejected")).one()
    assert event.detail["size"] == 10**6
    assert event.detail["mail_from"] == "alice@customer.example"


def test_oversize_data_gets_552_per_recipient_and_a_recorded_event(
    sqlite_daemon: RunningDaemon,
) -> None:
    client = sqlite_daemon.lmtp()
    # ~87 KB against a 64 KiB limit: within what a session buffers (the wire form of a
    # message at the limit), so the handler decides, counting line ends as one byte.
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 1200
    got = send(client, [SUPPORT, BILLING], big)
    assert [(c, t[:5]) for c, t in got] == [(552, b"5.3.4")] * 2
    # Still in sync, and a normal message on the same connection works.
    ((code, _),) = send(client, [SUPPORT], MESSAGE)
    client.quit()
    assert code == 250
    with sqlite_daemon.ctx.store.factory() as session:
        event = session.scalars(select(Event).where(Event.kind == "size-rejected")).one()
    assert event.detail["size"] == len(big) - big.count(b"\r\n")  # line ends count 1 byte
    assert event.detail["rcpt_to"] == [SUPPORT, BILLING]


def test_past_1000_recipients_the_answer_is_452(raw: Raw) -> None:
    rcpts = b"".join(f"RCPT TO:<r{i}@helpdesk.example>\r\n".encode() for i in range(1001))
    raw.send(b"LHLO c\r\nMAIL FROM:<alice@customer.example>\r\n" + rcpts)
    got = raw.replies(2 + 1001)
    assert all(r.startswith("250 ") for r in got[2:1002])
    assert got[-1].startswith("452 4.5.3")


def test_a_null_recipient_is_refused(raw: Raw) -> None:
    raw.send(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<>\r\nNOOP\r\n")
    got = raw.replies(4)
    assert got[1].startswith("250 "), "the null sender is fine (bounces come from it)"
    assert got[2].startswith("501 5.1.3")
    assert got[3].startswith("250 ")


def test_a_sender_that_is_not_utf8_is_refused_at_mail(
    sqlite_daemon: RunningDaemon, raw: Raw,
) -> None:
    """Accepted, it would make every DATA fail with 451: the MTA would retry for days."""
    raw.send(b"LHLO c\r\nMAIL FROM:<caf\xe9@customer.example> SMTPUTF8\r\n"
             b"MAIL FROM:<\xc3\xa9@customer.example>\r\n" + ENVELOPE[8:] + b"DATA\r\n")
    got = raw.replies(6)
    assert got[1].startswith("553 5.1.7"), got
    assert got[2].startswith("553 5.6.7"), "non-ASCII without SMTPUTF8"
    assert [r[:3] for r in got[3:]] == ["250", "250", "354"]
    raw.send(MESSAGE + b".\r\n")
    assert raw.replies(1)[0].startswith("250 2.0.0")


@pytest.mark.parametrize(("commands", "expected"), [
    (b"MAIL FROM:<a@b.example>", "503"),  # before LHLO
    (b"LHLO c\r\nRCPT TO:<s@helpdesk.example>", "503"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nDATA", "503"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>", "503"),
    (b"HELO c", "500"),  # LMTP speaks LHLO only
    (b"EHLO c", "500"),
    (b"LHLO", "501"),
    (b"LHLO c\r\nMAIL TO:<a@b.example>", "501"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example> AUTH=<>", "555"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME", "501"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example> SIZE=ten", "501"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<s@helpdesk.example> NOTIFY=NEVER",
     "555"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<s@helpdesk.example>\r\nDATA now",
     "501"),
    (b"BDAT 10 LAST", "500"),
    (b"", "500"),
    (b"X" * 5000, "500"),
    (b"VRFY someone", "252"),
    (b"HELP", "250"),
])
def test_protocol_errors_get_their_reply_and_the_session_goes_on(
    raw: Raw, commands: bytes, expected: str,
) -> None:
    raw.send(commands + b"\r\nNOOP\r\n")
    got = raw.replies(commands.count(b"\r\n") + 2)
    assert got[-2].startswith(expected), got
    assert got[-1].startswith("250 2.0.0 ")
    # ENHANCEDSTATUSCODES is advertised: aiosmtpd's own replies carry a code too (RFC 2034
    # leaves out only the greeting and the replies to HELO/EHLO/LHLO).
    if not commands.split(b"\r\n")[-1].startswith(b"LHLO"):
        assert re.match(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ", got[-2]), got[-2]


@pytest.mark.parametrize(("status", "expected"), [
    ("250 OK", "250 2.0.0 OK"),
    ('500 Error: command "X" not recognized', '500 5.5.2 Error: command "X" not recognized'),
    ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("250 2.1.0 Sender OK", "250 2.1.0 Sender OK"),  # ours already carry one
    ("250 2.0.0 Ok\r\n451 4.3.0 Later", "250 2.0.0 Ok\r\n451 4.3.0 Later"),
    ("220 host ESMTP", "220 host ESMTP"),  # the greeting has none
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),  # an AUTH challenge is left as it is
])
def test_aiosmtpds_own_replies_get_an_enhanced_code(status: str, expected: str) -> None:
    assert enhanced(status) == expected


def test_greeting_replies_keep_their_extension_lines_plain(raw: Raw) -> None:
    raw.send(b"LHLO again\r\nNOOP\r\n")
    lhlo, noop = raw.replies(2)
    assert "250-PIPELINING" in lhlo.split("|") and "250 HELP" in lhlo.split("|")
    assert noop.startswith("250 2.0.0 ")


def test_pipelined_commands_are_answered_in_order_and_the_extensions_advertised(
    raw: Raw,
) -> None:
    raw.send(ENVELOPE + b"RCPT TO:<nobody@elsewhere.example>\r\nRCPT TO:<>\r\n"
             + f"RCPT TO:<{BILLING}>\r\nDATA\r\n".encode())
    got = raw.replies(7)
    keywords = got[0].split("|")
    assert "250-PIPELINING" in keywords and "250-ENHANCEDSTATUSCODES" in keywords
    assert [r[:3] for r in got[1:]] == ["250", "250", "250", "501", "250", "354"]
    raw.send(MESSAGE + b".\r\nNOOP\r\nQUIT\r\n")
    got = raw.replies(5)
    assert [r[:9] for r in got[:3]] == ["250 2.0.0"] * 3, "one reply per accepted recipient"
    assert got[3].startswith("250 ") and got[4].startswith("221 ")
    assert raw.closed()


def test_smtp_listener_speaks_helo_and_ehlo_but_not_lhlo(sqlite_daemon: RunningDaemon) -> None:
    assert sqlite_daemon.daemon is not None
    smtp_port = [n[1] for n in sqlite_daemon.daemon.bound() if isinstance(n, tuple)][1]
    client = Raw(smtp_port)
    try:
        client.send(b"LHLO c\r\nHELO c\r\nMAIL FROM:<>\r\nRSET\r\nEHLO c\r\n")
        got = client.replies(5)
    finally:
        client.close()
    assert got[0].startswith("500 ") and got[1].startswith("250 ")
    assert got[2].startswith("250 2.1.0") and got[3].startswith("250 ")
    assert "250-PIPELINING" in got[4].split("|")


def test_too_many_unknown_commands_close_the_connection(raw: Raw) -> None:
    raw.send(b"BOGUS\r\n" * 10)
    got: list[str] = []
    while (line := raw.file.readline()) != b"":
        got.append(line.decode())
    assert got and got[-1].startswith("502 ") and len(got) < 10


# -- failures ----------------------------------------------------------------------------------


class _BuggyIntake(Intake):
    def prepare(self, raw: bytes, envelope: Any) -> Any:
        raise RuntimeError("secret internal detail")


class _LockedIntake(Intake):
    def store(self, session: Any, p: Any, touches: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is locked"))


def test_a_bug_answers_451_without_detail_and_quarantines(
    sqlite_daemon: RunningDaemon,
) -> None:
    ctx = sqlite_daemon.ctx
    ctx.intake = _BuggyIntake(ctx.config, ctx.store.factory)
    client = sqlite_daemon.lmtp()
    got = send(client, [SUPPORT, BILLING], MESSAGE)
    client.quit()
    assert [(c, t[:5]) for c, t in got] == [(451, b"4.3.0")] * 2
    assert all(b"secret" not in t and b"RuntimeError" not in t for _, t in got)
    spooled = entries(ctx.config.path(ctx.config.intake.spool_dir))
    assert len(spooled) == 1
    raw, envelope, meta = spooled[0].read()
    assert raw == MESSAGE and "secret internal detail" in str(meta["error"])
    assert envelope.rcpt_tos == (SUPPORT, BILLING)


def test_a_locked_database_answers_451_and_quarantines_nothing(
    sqlite_daemon: RunningDaemon,
) -> None:
    ctx = sqlite_daemon.ctx
    ctx.intake = _LockedIntake(ctx.config, ctx.store.factory)
    client = sqlite_daemon.lmtp()
    ((code, text),) = send(client, [SUPPORT], MESSAGE)
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
    code, text = client.rcpt(SUPPORT)
    assert client.noop()[0] == 250, "the session goes on"
    client.quit()
    assert (code, text[:5]) == (451, b"4.3.0")
    assert b"boom" not in text and b"KeyError" not in text


def test_client_disconnecting_in_data_leaves_the_server_healthy(
    sqlite_daemon: RunningDaemon,
) -> None:
    client = sqlite_daemon.lmtp()
    client.mail("alice@customer.example")
    client.rcpt(SUPPORT)
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(MESSAGE[:30])
    client.close()
    client = sqlite_daemon.lmtp()
    ((code, _),) = send(client, [SUPPORT], MESSAGE)
    client.quit()
    assert code == 250
    assert sqlite_daemon.count(Ticket) == 1
