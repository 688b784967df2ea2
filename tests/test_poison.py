"""Poison messages (issue 15): input that failed the same way on every retry is stored.

A header value longer than its column (PostgreSQL: StringDataRightTruncation) and an
envelope address that is not UTF-8 (UnicodeEncodeError) made the intake answer 451 / exit
75 forever. Each case is fed on SQLite and PostgreSQL, through the intake and through the
real `ticketgate pipe`, and must be stored with its raw bytes unchanged.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.intake.columns import message_id_key
from gateway.intake.core import Intake
from gateway.intake.ports import Route
from gateway.mail.envelope import Envelope, address_bytes, address_text
from gateway.runtime import Store
from gateway.sysexits import EX_OK
from tests.pipe_helpers import SUPPORT, query, ticketgate, write_config
from tests.server_helpers import RunningDaemon, daemon_config, prepare_database
from ticketstore.models import Article, Attachment, Ticket

LONG_ID = "a" * 1200 + "@customer.example"  # 998 characters is the column
LONG_LOCAL = "l" * 330 + "@customer.example"  # 320 characters is the column
LONG_DOMAIN = "ana@" + "d" * 250 + ".example"  # 255 characters for the domain
LONG_TYPE = "application/x-" + "t" * 300  # 255 characters for the content type
NOT_UTF8 = b"caf\xe9@customer.example"
LONG_SENDER = "s" * 400 + "@customer.example"


def message(*, message_id: str = "m1@customer.example", sender: str = "ana@customer.example",
            subject: str = "Printer on fire", content_type: str = "application/pdf") -> bytes:
    return (
        f"From: Ana <{sender}>\n"
        f"To: {SUPPORT}\n"
        f"Subject: {subject}\n"
        f"Message-ID: <{message_id}>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n'
        "\n"
        "--b\n"
        "Content-Type: text/plain\n"
        "\n"
        "Please help.\n"
        "--b\n"
        f"Content-Type: {content_type}\n"
        'Content-Disposition: attachment; filename="x.bin"\n'
        "\n"
        "payload\n"
        "--b--\n"
    ).encode()


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    mail_from: str = "ana@customer.example"  # as argv has it (undecodable bytes: surrogates)
    rcpt_to: str = SUPPORT


def _argv(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


CASES = [
    Case("long Message-ID", message(message_id=LONG_ID)),
    Case("long From local part", message(sender=LONG_LOCAL)),
    Case("long From domain", message(sender=LONG_DOMAIN)),
    Case("long attachment Content-Type", message(content_type=LONG_TYPE)),
    Case("envelope sender not UTF-8", message(), mail_from=_argv(NOT_UTF8)),
    Case("envelope recipient not UTF-8", message(), rcpt_to=_argv(b"supp\xf6rt@helpdesk.example")),
    Case("long envelope sender", message(), mail_from=LONG_SENDER),
]


def check_stored(db_url: str, case: Case) -> None:
    (article,) = query(db_url, "select * from articles where direction = 'in'")
    assert bytes(article.raw) == case.raw
    assert len(query(db_url, "select id from tickets")) == 1
    # The envelope is kept losslessly (the sender cut to its 320 characters):
    # `address_bytes` gives back what argv held.
    assert article.envelope_sender == address_text(case.mail_from)[:320]
    if len(case.mail_from) <= 320:
        assert address_bytes(article.envelope_sender) == case.mail_from.encode(
            "utf-8", "surrogateescape")
    recipients = article.envelope_recipients
    recipients = json.loads(recipients) if isinstance(recipients, str) else recipients
    assert [address_bytes(r) for r in recipients] == [case.rcpt_to.encode("utf-8",
                                                                          "surrogateescape")]
    (ticket,) = query(db_url, "select * from tickets")
    assert len(ticket.customer_address) <= 320 and len(ticket.customer_domain) <= 255
    (att,) = query(db_url, "select content_type from attachments")
    assert len(att.content_type) <= 255


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_poison_message_is_stored_through_the_intake(intake: Intake, store: Store, db_url: str,
                                                     case: Case) -> None:
    d = intake.process(case.raw, Envelope(case.mail_from, (case.rcpt_to,)))
    assert d.ticket_number
    check_stored(db_url, case)
    # A redelivery is recognised: the cut Message-ID is the same key every time.
    assert intake.process(case.raw, Envelope(case.mail_from, (case.rcpt_to,))).outcome.value \
        == "duplicate"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_poison_message_is_stored_through_the_pipe(tmp_path: Path, db_url: str,
                                                   case: Case) -> None:
    config = write_config(tmp_path, db_url)
    r = ticketgate(config, "pipe", "-f", case.mail_from, "-r", case.rcpt_to, stdin=case.raw)
    assert r.returncode == EX_OK, r.stderr
    check_stored(db_url, case)


def test_cut_values() -> None:
    assert message_id_key("short@x") == "short@x"
    key = message_id_key(LONG_ID)
    assert len(key) == 998 and key.startswith("a" * 900) and key == message_id_key(LONG_ID)
    assert message_id_key(LONG_ID + "x") != key  # same beginning, another ID
    for address in ["a@b.example", "Jörg@b.example", _argv(NOT_UTF8), "q\\u@x", "\\xe9@x"]:
        written = address_text(address)
        assert written.encode("utf-8")  # any database takes it
        assert address_bytes(written) == address.encode("utf-8", "surrogateescape")
    assert address_text(_argv(NOT_UTF8)) == "caf\\xe9@customer.example"
    # A literal backslash is escaped too, so the two cannot be confused.
    assert address_text("caf\\xe9@customer.example") == "caf\\x5cxe9@customer.example"


def test_two_long_message_ids_with_the_same_beginning_stay_apart(intake: Intake,
                                                                  store: Store) -> None:
    """Each is its own article, and a reply threads to the ticket of the one it names."""
    first, second = LONG_ID, LONG_ID.replace("@", "-2@")
    assert first[:998] == second[:998]
    t1 = intake.process(message(message_id=first), Envelope("a@x.example", (SUPPORT,)))
    t2 = intake.process(message(message_id=second, subject="Other"),
                        Envelope("a@x.example", (SUPPORT,)))
    assert t1.ticket_number != t2.ticket_number
    reply = message(message_id="r@x.example", subject="no tag").replace(
        b"MIME-Version", f"In-Reply-To: <{second}>\nMIME-Version".encode())
    d = intake.process(reply, Envelope("a@x.example", (SUPPORT,)))
    assert d.outcome.value == "follow-up" and d.ticket_number == t2.ticket_number
    with store.factory() as session:
        ids = session.scalars(select(Article.message_id).order_by(Article.id)).all()
    assert len(set(ids)) == 3 and all(len(i) <= 998 for i in ids)


class LongRoute:
    """A router whose rules put long captures into customer and thread_key."""

    def route(self, msg: Any, envelope: Any, classification: Any, verdict: Any = None) -> Route:
        return Route(customer="c" * 300, thread_key="k" * 700 + msg.subject[-1])


def test_long_rule_values_are_cut_and_still_thread(intake: Intake, store: Store) -> None:
    routed = Intake(intake.config, store.factory, router=LongRoute())
    env = Envelope("a@x.example", (SUPPORT,))
    one = routed.process(message(message_id="1@x", subject="Alert 1"), env)
    two = routed.process(message(message_id="2@x", subject="Alert 1"), env)
    other = routed.process(message(message_id="3@x", subject="Alert 2"), env)
    assert two.outcome.value == "follow-up" and two.ticket_number == one.ticket_number
    assert other.ticket_number != one.ticket_number
    with store.factory() as session:
        tickets = session.scalars(select(Ticket)).all()
        assert {len(t.customer_id) for t in tickets} == {200}
        assert {len(t.thread_key or "") for t in tickets} == {500}
        assert session.scalars(select(Attachment.content_type)).all()


def _replies(sock: socket.socket, data: bytes, count: int) -> list[bytes]:
    sock.sendall(data)
    got: list[bytes] = []
    with sock.makefile("rb") as f:
        while len(got) < count:
            line = f.readline()
            assert line, got
            if line[3:4] != b"-":
                got.append(line.rstrip())
    return got


def test_lmtp_refuses_a_sender_that_is_not_utf8_and_stores_such_a_recipient(
    tmp_path: Path, db_url: str,
) -> None:
    """MAIL FROM: a permanent `553 5.1.7` (Postfix bounces; never 451). RCPT TO: stored,
    the undecodable byte kept as `\\xNN`."""
    prepare_database(db_url)
    d = RunningDaemon(daemon_config(tmp_path, db_url)).start()
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=30) as sock:
            assert _replies(sock, b"", 1)[0].startswith(b"220")
            (_lhlo, mail) = _replies(sock, b"LHLO c\r\nMAIL FROM:<" + NOT_UTF8 + b">\r\n", 2)
            assert mail.startswith(b"553 5.1.7")
            rcpt = b"supp\xf6rt@helpdesk.example"
            got = _replies(sock, b"RSET\r\nMAIL FROM:<ana@customer.example>\r\nRCPT TO:<"
                           + rcpt + b">\r\nDATA\r\n", 4)
            assert [g[:3] for g in got] == [b"250", b"250", b"250", b"354"], got
            raw = message().replace(b"\n", b"\r\n")
            (done,) = _replies(sock, raw + b".\r\n", 1)
            assert done.startswith(b"250 "), done
        (article,) = query(db_url, "select * from articles")
        assert bytes(article.raw) == raw
        recipients = article.envelope_recipients
        recipients = json.loads(recipients) if isinstance(recipients, str) else recipients
        assert recipients == ["supp\\xf6rt@helpdesk.example"]
        assert address_bytes(recipients[0]) == rcpt
    finally:
        d.stop()
