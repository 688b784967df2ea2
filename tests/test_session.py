"""The native LMTP/SMTP session, fed byte chunks directly.

Feeding `data_received` by hand is what lets these tests choose every chunk boundary
(a terminator split across packets, pipelined commands in one packet); the end-to-end
behaviour over real sockets, for both engines, is in tests/test_lmtp.py and the Postfix
tests. The handler here records what the session hands it instead of storing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mail.envelope import Envelope
from gateway.server import replies
from gateway.server.session import MAX_BAD_COMMANDS, PAUSE_ABOVE, Session, _Syntax, parse_path


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def lines(self) -> list[str]:
        return b"".join(self.writes).decode().splitlines()


class Handler:
    """What the session needs from DeliveryHandler, recording instead of storing."""

    def __init__(self, accept: Callable[[str], bool] = lambda a: a.endswith("@helpdesk.example")
                 ) -> None:
        self.accept = accept
        self.draining = False
        self.connections: set[Any] = set()
        self.background: set[asyncio.Task[None]] = set()
        self.delivered: list[tuple[bytes, Envelope]] = []
        self.rejected: list[tuple[int, Envelope]] = []
        self.gate: asyncio.Event | None = None  # set: deliver waits for it

    def recipient(self, address: str, accepted: list[str]) -> str:
        if not self.accept(address):
            return replies.S550_NO_SUCH_USER
        accepted.append(address)
        return replies.S250_RECIPIENT_OK

    def session_error(self, error: Exception) -> str:
        return replies.S451_TEMPFAIL

    def closed(self, conn: Any) -> None:
        self.connections.discard(conn)

    async def deliver(self, raw: bytes, envelope: Envelope) -> str:
        if self.gate is not None:
            await self.gate.wait()
        self.delivered.append((raw, envelope))
        return "250 2.0.0 Ok: created ticket 1"

    async def size_rejected(self, size: int, envelope: Envelope) -> None:
        self.rejected.append((size, envelope))


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def open_session(handler: Handler | None = None, *, lmtp: bool = True,
                 size_limit: int = 1 << 20, timeout: float = 300.0
                 ) -> tuple[Session, Transport, Handler]:
    handler = handler or Handler()
    session = Session(handler, lmtp=lmtp, hostname="gw.test", ident="ticketgate test",  # type: ignore[arg-type]
                      size_limit=size_limit, timeout=timeout)
    transport = Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    transport.writes.clear()  # the greeting
    return session, transport, handler


ENVELOPE = (b"LHLO client\r\nMAIL FROM:<c@customer.example>\r\n"
            b"RCPT TO:<support@helpdesk.example>\r\n")


def test_pipelined_commands_are_answered_in_order_in_one_write() -> None:
    async def body() -> None:
        session, transport, _h = open_session()
        session.data_received(ENVELOPE + b"RCPT TO:<nobody@elsewhere.example>\r\n"
                              b"RCPT TO:<billing@helpdesk.example>\r\nDATA\r\n")
        assert len(transport.writes) == 1
        codes = [line[:4] for line in transport.lines()]
        assert codes[-5:] == ["250 ", "250 ", "550 ", "250 ", "354 "]
        assert "250-PIPELINING" in transport.lines()
        assert "250-ENHANCEDSTATUSCODES" in transport.lines()
    run(body)


def stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, as a client does it."""
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


line_text = st.sampled_from([b"", b".", b"..", b".x", b"a.", b"text", b"\r", b"x" * 300,
                             b". \t", b"\xc3\xa9t\xc3\xa9"])


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(line_text, max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_data_survives_any_chunking_and_pipelined_commands_wait_their_turn(
    lines: list[bytes], cuts: list[int]
) -> None:
    message = b"".join(line + b"\r\n" for line in lines)

    async def body() -> None:
        session, transport, handler = open_session()
        session.data_received(ENVELOPE + b"DATA\r\n")
        stream = stuff(message) + b".\r\nNOOP\r\n"
        bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
        for a, b in itertools.pairwise(bounds):
            session.data_received(stream[a:b])
        await settle()
        assert [raw for raw, _e in handler.delivered] == [message]
        assert [line[:4] for line in transport.lines()][-3:] == ["354 ", "250 ", "250 "]
        assert transport.lines()[-2].startswith("250 2.0.0 Ok: created")
    run(body)


def test_the_transport_read_path_reuses_one_buffer_per_session() -> None:
    """What asyncio calls for a buffered protocol: get_buffer, then buffer_updated."""
    async def body() -> None:
        session, transport, handler = open_session()
        stream = ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
        buffers = set()
        for i in range(0, len(stream), 7):
            buf = session.get_buffer(-1)
            buffers.add(id(buf.obj))
            piece = stream[i:i + 7]
            buf[:len(piece)] = piece
            session.buffer_updated(len(piece))
        await settle()
        assert len(buffers) == 1  # no allocation per read
        assert [raw for raw, _e in handler.delivered] == [b"Subject: x\r\n\r\nhi\r\n"]
        assert transport.lines()[-1].startswith("250 2.0.0 Ok: created")
    run(body)


def test_an_empty_message_split_after_its_dot_is_still_one_empty_message() -> None:
    async def body() -> None:
        session, _t, handler = open_session()
        session.data_received(ENVELOPE + b"DATA\r\n.")
        session.data_received(b"\r\n")
        await settle()
        assert [raw for raw, _e in handler.delivered] == [b""]
    run(body)


def test_lmtp_answers_once_per_recipient_smtp_once() -> None:
    async def body() -> None:
        for lmtp, hello, expected in ((True, b"LHLO c", 2), (False, b"EHLO c", 1)):
            session, transport, _h = open_session(lmtp=lmtp)
            session.data_received(hello + b"\r\nMAIL FROM:<>\r\nRCPT TO:<a@helpdesk.example>\r\n"
                                  b"RCPT TO:<b@helpdesk.example>\r\nDATA\r\n")
            transport.writes.clear()
            session.data_received(b"Subject: x\r\n\r\nhi\r\n.\r\n")
            await settle()
            assert len([ln for ln in transport.lines() if ln.startswith("250 2.0.0")]) == expected
    run(body)


def test_oversize_data_is_dropped_as_it_arrives_and_refused_per_recipient() -> None:
    async def body() -> None:
        session, transport, handler = open_session(size_limit=2048)
        session.data_received(ENVELOPE + b"RCPT TO:<b@helpdesk.example>\r\nDATA\r\n")
        transport.writes.clear()
        chunk = b"y" * 998 + b"\r\n"
        for _ in range(50):
            session.data_received(chunk)
            assert len(session._buf) < 2048 + len(chunk)  # never holds the whole message
        session.data_received(b"last line\r\n.")  # the terminator split across packets
        session.data_received(b"\r\nNOOP\r\n")
        await settle()
        assert handler.delivered == []
        (size, envelope), = handler.rejected
        assert size >= 50 * len(chunk) and len(envelope.rcpt_tos) == 2
        assert transport.lines() == [replies.S552_TOO_BIG] * 2 + ["250 2.0.0 OK"]
    run(body)


def test_declared_oversize_is_refused_at_mail_after_the_event_is_recorded() -> None:
    async def body() -> None:
        session, transport, handler = open_session(size_limit=2048)
        session.data_received(b"LHLO c\r\nMAIL FROM:<c@customer.example> SIZE=5000\r\nNOOP\r\n")
        assert handler.rejected == [] or transport.lines()[-1] != "250 2.0.0 OK"
        await settle()
        assert handler.rejected == [(5000, Envelope("c@customer.example", ()))]
        assert transport.lines()[-2:] == [replies.S552_TOO_BIG, "250 2.0.0 OK"]
        assert "250-SIZE 2048" in transport.lines()
    run(body)


@pytest.mark.parametrize(("commands", "expected"), [
    (b"MAIL FROM:<a@b.example>", "503 5.5.1"),  # before LHLO
    (b"LHLO c\r\nRCPT TO:<s@helpdesk.example>", "503 5.5.1"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nDATA", "503 5.5.1"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>", "503 5.5.1"),
    (b"HELO c", "500 5.5.1"),  # LMTP speaks LHLO only
    (b"EHLO c", "500 5.5.1"),
    (b"LHLO", "501 5.5.4"),
    (b"LHLO c\r\nMAIL TO:<a@b.example>", "501 5.5.4"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example> AUTH=<>", "555 5.5.4"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME", "501 5.5.4"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example> SIZE=ten", "501 5.5.4"),
    (b"LHLO c\r\nMAIL FROM:<\xc3\xa9@b.example>", "553 5.6.7"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<s@helpdesk.example> NOTIFY=NEVER",
     "555 5.5.4"),
    (b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<s@helpdesk.example>\r\nDATA now",
     "501 5.5.4"),
    (b"BDAT 10 LAST", "500 5.5.1"),
    (b"", "500 5.5.2"),
    (b"NOOP \xff", "500 5.5.2"),
    (b"X" * 5000, "500 5.5.6"),
    (b"VRFY someone", "252 2.0.0"),
    (b"HELP", "214 2.0.0"),
])
def test_protocol_errors_get_their_reply_and_the_session_goes_on(commands: bytes,
                                                                 expected: str) -> None:
    async def body() -> None:
        session, transport, _h = open_session()
        session.data_received(commands + b"\r\nNOOP\r\n")
        lines = transport.lines()
        assert lines[-2].startswith(expected), lines
        assert lines[-1] == "250 2.0.0 OK" and not transport.closed
    run(body)


def test_smtp_listener_speaks_helo_and_ehlo_but_not_lhlo() -> None:
    async def body() -> None:
        session, transport, _h = open_session(lmtp=False)
        session.data_received(b"LHLO c\r\nHELO c\r\nMAIL FROM:<>\r\nRSET\r\nEHLO c\r\n")
        lines = transport.lines()
        assert lines[0].startswith("500 5.5.1") and lines[1] == "250 gw.test"
        assert lines[2].startswith("250 2.1.0") and lines[3] == "250 2.0.0 OK"
        assert lines[-1] == "250 HELP"
    run(body)


def test_a_non_ascii_sender_is_accepted_with_smtputf8() -> None:
    async def body() -> None:
        session, transport, _h = open_session()
        session.data_received("LHLO c\r\nMAIL FROM:<josé@b.example> SMTPUTF8\r\n".encode())
        assert transport.lines()[-1].startswith("250 2.1.0")
    run(body)


def test_a_failing_recipient_check_is_451_and_the_session_continues() -> None:
    def explode(address: str) -> bool:
        raise KeyError("boom")

    async def body() -> None:
        session, transport, _h = open_session(Handler(accept=explode))
        session.data_received(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<s@x.example>\r\n"
                              b"NOOP\r\n")
        assert transport.lines()[-2:] == [replies.S451_TEMPFAIL, "250 2.0.0 OK"]
    run(body)


def test_commands_sent_while_a_message_is_stored_wait_and_input_is_paused() -> None:
    async def body() -> None:
        handler = Handler()
        handler.gate = asyncio.Event()
        session, transport, _h = open_session(handler)
        session.data_received(ENVELOPE + b"DATA\r\n")
        session.data_received(b"Subject: x\r\n\r\nhi\r\n.\r\nNOOP\r\n")
        await settle()
        assert transport.lines()[-1].startswith("354")  # nothing answered while storing
        session.data_received(b"z" * (PAUSE_ABOVE + 1))
        assert transport.paused
        handler.gate.set()
        await settle()
        after = transport.lines()[transport.lines().index(replies.S354_START_DATA) + 1:]
        assert after[0].startswith("250 2.0.0 Ok: created") and after[1] == "250 2.0.0 OK"
        assert after[2].startswith("500 5.5.6")  # the megabyte without a line end
        assert not transport.paused
    run(body)


def test_draining_closes_after_the_reply_and_refuses_new_connections() -> None:
    async def body() -> None:
        session, transport, handler = open_session()
        session.data_received(ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nhi\r\n")
        handler.draining = True
        session.data_received(b".\r\n")
        await settle()
        assert transport.lines()[-2].startswith("250 2.0.0 Ok")
        assert transport.lines()[-1] == replies.S421_SHUTTING_DOWN and transport.closed
        late = Session(handler, lmtp=True, hostname="h", ident="i", size_limit=0)  # type: ignore[arg-type]
        t2 = Transport()
        late.connection_made(t2)  # type: ignore[arg-type]
        assert t2.lines() == [replies.S421_SHUTTING_DOWN] and t2.closed
    run(body)


def test_too_many_bad_commands_close_the_connection() -> None:
    async def body() -> None:
        session, transport, _h = open_session()
        session.data_received(b"BOGUS\r\n" * (MAX_BAD_COMMANDS + 1) + b"NOOP\r\n")
        assert transport.lines()[-1].startswith("421 4.7.0") and transport.closed
    run(body)


def test_an_idle_connection_is_closed_with_421() -> None:
    async def body() -> None:
        session, transport, _h = open_session(timeout=0.05)
        session.data_received(b"LHLO c\r\n")
        for _ in range(100):  # bounded: at most 2 s
            if transport.closed:
                break
            await asyncio.sleep(0.02)
        assert transport.lines()[-1].startswith("421 4.4.2") and transport.closed
    run(body)


def test_quit_says_goodbye_and_closes() -> None:
    async def body() -> None:
        session, transport, _h = open_session()
        session.data_received(b"QUIT\r\nNOOP\r\n")
        assert transport.lines() == ["221 2.0.0 Bye"] and transport.closed
    run(body)


@pytest.mark.parametrize(("text", "expected"), [
    ("<a@b.example>", ("a@b.example", [])),
    (" <a@b.example> SIZE=10 BODY=8BITMIME", ("a@b.example", ["SIZE=10", "BODY=8BITMIME"])),
    ("<>", ("", [])),
    ("<@relay.example,@r2.example:a@b.example>", ("a@b.example", [])),
    ('<"odd > name"@b.example>', ('"odd > name"@b.example', [])),
    ("a@b.example SIZE=1", ("a@b.example", ["SIZE=1"])),
])
def test_parse_path(text: str, expected: tuple[str, list[str]]) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize("text", ["<a@b.example", "<a b@c.example>", "<a\x01@b.example>", "",
                                  "a<b@c.example>"])
def test_parse_path_refuses(text: str) -> None:
    with pytest.raises(_Syntax):
        parse_path(text)
