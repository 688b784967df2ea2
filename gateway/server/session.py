"""The native LMTP/SMTP session: a plain `asyncio.Protocol` state machine.

Why not aiosmtpd's session here: it runs every command as a coroutine over a stream
reader, re-arms a timer per line and awaits a drain per reply; measured on the
benchmark VM that is 0.8-1.0 ms of CPU per message, about ten times this class and
more than parsing and storing the message together. This session parses the bytes as
they arrive, answers pipelined commands in one write, and suspends only while a
message is being stored. aiosmtpd's session remains available (`[lmtp] engine =
"aiosmtpd"`) and the protocol tests run against both.

What it speaks (RFC 5321, RFC 2033, RFC 1870 SIZE, RFC 2920 PIPELINING, RFC 2034
ENHANCEDSTATUSCODES, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8): LHLO (LMTP) or HELO/EHLO
(SMTP), MAIL, RCPT, DATA, RSET, NOOP, VRFY, HELP, QUIT. No STARTTLS or AUTH: the
gateway listens where only the local MTA can reach it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from gateway.mail.envelope import Envelope

from . import replies

if TYPE_CHECKING:
    from .handler import DeliveryHandler

log = logging.getLogger("ticketgate.server")

# RFC 5321 4.5.3.1.4 says 512 octets; real clients send long SIZE/ORCPT parameters.
MAX_COMMAND_LINE = 4096
MAX_RECIPIENTS = 1000  # RFC 5321 4.5.3.1.8 asks for at least 100
# While a message is being stored, stop reading once this much input is waiting.
PAUSE_ABOVE = 1 << 20
IDLE_TIMEOUT = 300.0  # RFC 5321 4.5.3.2.7: at least five minutes between commands
RECV_BUFFER = 64 * 1024  # bytes one read may return
MAX_BAD_COMMANDS = 20

_CRLF = b"\r\n"
_TERMINATOR = b"\r\n.\r\n"
_MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8"})


class _Syntax(ValueError):
    """A malformed path or parameter list; the text is the reply."""


def parse_path(text: str) -> tuple[str, list[str]]:
    """`<local@domain> PARAM=...` -> (address, params). `<>` is the null path ("").

    A source route (`<@relay:user@domain>`, RFC 5321 C) is dropped. A path without
    angle brackets is accepted when it is one word, as lenient servers do.
    """
    text = text.strip()
    if not text.startswith("<"):
        word, _sp, rest = text.partition(" ")
        if not word or "<" in word or ">" in word:
            raise _Syntax("501 5.5.4 Syntax: expected <address>")
        return word, rest.split()
    # The closing bracket, skipping any inside a quoted local part.
    quoted = False
    end = -1
    for i in range(1, len(text)):
        c = text[i]
        if c == '"' and text[i - 1] != "\\":
            quoted = not quoted
        elif c == ">" and not quoted:
            end = i
            break
    if end < 0:
        raise _Syntax("501 5.5.4 Syntax: missing '>'")
    address = text[1:end]
    if address.startswith("@"):
        address = address.partition(":")[2]
    if not address.isprintable() or (" " in address and '"' not in address):
        raise _Syntax("553 5.1.3 Error: malformed address")
    return address, text[end + 1:].split()


def unstuff(buf: bytearray) -> bytes:
    """RFC 5321 4.5.2: the client doubled every dot that starts a line; undo it.

    `buf` is consumed (changed in place where that saves a copy of a big message).
    """
    if buf[:1] == b".":
        del buf[:1]
    if b"\r\n." in buf:
        buf = buf.replace(b"\r\n.", b"\r\n")
    return bytes(buf)


class Session(asyncio.BufferedProtocol):
    """One client connection. `lmtp` selects LHLO and one reply per recipient.

    A buffered protocol: the transport reads into one buffer per session instead of
    allocating 256 KiB for every read (with the mmap threshold `serve` fixes at start,
    each such read was an mmap and munmap; see gateway/server/malloc.py).
    """

    def __init__(self, handler: DeliveryHandler, *, lmtp: bool, hostname: str, ident: str,
                 size_limit: int | None, timeout: float = IDLE_TIMEOUT) -> None:
        self.handler = handler
        self.lmtp = lmtp
        self.hostname = hostname
        self.ident = ident
        self.size_limit = size_limit or 0
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a message is being received or stored
        self._buf = bytearray()
        self._recv_view = memoryview(bytearray(RECV_BUFFER))
        self._out: list[bytes] = []
        self._greeted = False
        self._mail_from: str | None = None
        self._rcpts: list[str] = []
        self._in_data = False
        self._scan = 0  # where to resume looking for the terminator
        self._dropped = 0  # DATA bytes dropped so far: > 0 means the message is oversize
        self._paused = False
        self._storing = False
        self._bad = 0
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.handler.draining:
            self.close_with(replies.S421_SHUTTING_DOWN)
            return
        self.handler.connections.add(self)
        kind = "LMTP" if self.lmtp else "ESMTP"
        transport.write(f"220 {self.hostname} {kind} {self.ident}\r\n".encode())  # type: ignore[attr-defined]
        if self.timeout:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler.closed(self)
        if self._timer is not None:
            self._timer.cancel()
        self._buf = bytearray()
        self.transport = None

    def close_with(self, reply: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii") + _CRLF)
            transport.close()

    def _idle_check(self) -> None:
        idle = time.monotonic() - self._last
        if self._storing or idle < self.timeout:
            wait = self.timeout if self._storing else self.timeout - idle
            self._timer = asyncio.get_running_loop().call_later(max(wait, 1.0), self._idle_check)
            return
        log.debug("closing idle connection after %.0f s", idle)
        self.close_with("421 4.4.2 Idle for too long, closing connection")

    # -- input ------------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._recv_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self._last = time.monotonic()
        self._buf += data
        if not self.busy or self._in_data:
            self._run()
        elif len(self._buf) > PAUSE_ABOVE and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def _run(self) -> None:
        """Answer every complete command in the buffer, in order, with one write."""
        while self.transport is not None and not self.transport.is_closing():
            if self._in_data:
                if not self._take_data():
                    break
                continue
            if self.busy:
                break
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_COMMAND_LINE:
                    self._bad_command("500 5.5.6 Error: line too long")
                    self._buf.clear()
                break
            line = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[:end + 1]
            if len(line) > MAX_COMMAND_LINE:
                self._bad_command("500 5.5.6 Error: line too long")
                continue
            self._command(line)
        self._flush()

    def _reply(self, text: str) -> None:
        self._out.append(text.encode("utf-8") + _CRLF)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    # -- commands ---------------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._bad_command("500 5.5.2 Error: command is not UTF-8")
            return
        verb, _sp, arg = text.partition(" ")
        method = _COMMANDS.get(verb.upper())
        if method is None:
            self._bad_command(f'500 5.5.1 Error: command "{verb[:20].upper()}" not recognized'
                              if verb else "500 5.5.2 Error: bad syntax")
            return
        try:
            method(self, arg.strip())
        except Exception as exc:  # never a traceback to the client: 451, logged
            self._reply(self.handler.session_error(exc))

    def _bad_command(self, reply: str) -> None:
        self._bad += 1
        if self._bad > MAX_BAD_COMMANDS:
            self._reply("421 4.7.0 Too many errors, closing connection")
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        self._reply(reply)

    def _lhlo(self, arg: str) -> None:
        if not self.lmtp:
            self._bad_command('500 5.5.1 Error: command "LHLO" not recognized')
            return
        self._hello(arg, "LHLO", extended=True)

    def _ehlo(self, arg: str) -> None:
        self._hello(arg, "EHLO", extended=True)

    def _helo(self, arg: str) -> None:
        self._hello(arg, "HELO", extended=False)

    def _hello(self, arg: str, verb: str, *, extended: bool) -> None:
        if self.lmtp and verb != "LHLO":
            self._bad_command(f'500 5.5.1 Error: command "{verb}" not recognized '
                              "(this is LMTP: say LHLO)")
            return
        if not arg:
            self._reply(f"501 5.5.4 Syntax: {verb} hostname")
            return
        self._reset()
        self._greeted = True
        if not extended:
            self._reply(f"250 {self.hostname}")
            return
        lines = [self.hostname, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        if self.size_limit:
            lines.insert(1, f"SIZE {self.size_limit}")
        lines.append("HELP")
        for line in lines[:-1]:
            self._reply(f"250-{line}")
        self._reply(f"250 {lines[-1]}")

    def _mail(self, arg: str) -> None:
        if not self._greeted:
            self._reply("503 5.5.1 Error: send LHLO first" if self.lmtp
                        else "503 5.5.1 Error: send HELO first")
            return
        if self._mail_from is not None:
            self._reply("503 5.5.1 Error: nested MAIL command")
            return
        if arg[:5].upper() != "FROM:":
            self._reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        try:
            address, params = parse_path(arg[5:])
        except _Syntax as exc:
            self._reply(str(exc))
            return
        for param in params:
            key, _eq, value = param.partition("=")
            key = key.upper()
            if key not in _MAIL_PARAMS:
                self._reply("555 5.5.4 MAIL FROM parameters not recognized or not implemented")
                return
            if key == "SIZE":
                if not value.isdigit():
                    self._reply("501 5.5.4 Syntax: SIZE=<number>")
                    return
                if self.size_limit and int(value) > self.size_limit:
                    self._suspend(self.handler.size_rejected(int(value), Envelope(address, ())),
                                  replies.S552_TOO_BIG, 1)
                    return
            elif key == "BODY" and value.upper() not in ("7BIT", "8BITMIME"):
                self._reply("501 5.5.4 Error: BODY can only be 7BIT or 8BITMIME")
                return
        if not address.isascii() and "SMTPUTF8" not in (p.upper() for p in params):
            self._reply("553 5.6.7 Error: non-ASCII address needs SMTPUTF8")
            return
        self._mail_from = address
        self._reply(replies.S250_SENDER_OK)

    def _rcpt(self, arg: str) -> None:
        if self._mail_from is None:
            self._reply("503 5.5.1 Error: need MAIL command")
            return
        if arg[:3].upper() != "TO:":
            self._reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            address, params = parse_path(arg[3:])
        except _Syntax as exc:
            self._reply(str(exc))
            return
        if not address:
            self._reply("501 5.1.3 Error: empty recipient")
            return
        if params:
            self._reply("555 5.5.4 RCPT TO parameters not recognized or not implemented")
            return
        if len(self._rcpts) >= MAX_RECIPIENTS:
            self._reply("452 4.5.3 Error: too many recipients")
            return
        self._reply(self.handler.recipient(address, self._rcpts))

    def _data(self, arg: str) -> None:
        if self._mail_from is None:
            self._reply("503 5.5.1 Error: need MAIL command")
            return
        if not self._rcpts:
            self._reply(replies.S503_NEED_RCPT)
            return
        if arg:
            self._reply(replies.S501_SYNTAX_DATA)
            return
        self._reply(replies.S354_START_DATA)
        self._flush()
        self.busy = True
        self._in_data = True
        self._scan = 0
        self._dropped = 0

    def _rset(self, arg: str) -> None:
        self._reset()
        self._reply("250 2.0.0 OK")

    def _noop(self, arg: str) -> None:
        self._reply("250 2.0.0 OK")

    def _vrfy(self, arg: str) -> None:
        self._reply("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"
                    if arg else "501 5.5.4 Syntax: VRFY <address>")

    def _help(self, arg: str) -> None:
        hello = "LHLO" if self.lmtp else "HELO EHLO"
        self._reply(f"214 2.0.0 Supported commands: {hello} MAIL RCPT DATA RSET NOOP VRFY "
                    "HELP QUIT")

    def _quit(self, arg: str) -> None:
        self._reply("221 2.0.0 Bye")
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _reset(self) -> None:
        self._mail_from = None
        self._rcpts = []

    # -- DATA -------------------------------------------------------------------------------

    def _take_data(self) -> bool:
        """Consume DATA input; True once the message is complete (and handed on)."""
        buf = self._buf
        if not self._dropped and buf[:3] == b".\r\n":  # an empty message
            end = 0
        else:
            end = buf.find(_TERMINATOR, max(self._scan - 4, 0))
            if end < 0:
                self._scan = len(buf)
                if self.size_limit and len(buf) > self.size_limit + 2:
                    self._start_dropping()
                return False
            end += 2  # the message keeps its last CRLF; ".\r\n" follows
        rest = buf[end + 3:]
        del buf[end:]
        self._buf = rest
        self._in_data = False
        envelope = Envelope(self._mail_from or "", tuple(self._rcpts))
        self._reset()
        size = self._dropped + len(buf)
        if self._dropped or (self.size_limit and size > self.size_limit):
            del buf
            self._suspend(self.handler.size_rejected(size, envelope), replies.S552_TOO_BIG,
                          len(envelope.rcpt_tos))
            return True
        raw = unstuff(buf)
        del buf
        self._suspend(self.handler.deliver(raw, envelope), None, len(envelope.rcpt_tos))
        return True

    def _start_dropping(self) -> None:
        """Over the size limit: keep counting, keep only what can hold the terminator."""
        keep = self._buf[-4:]
        self._dropped += len(self._buf) - len(keep)
        self._buf = bytearray(keep)
        self._scan = len(keep)

    def _suspend(self, work: Awaitable[str | None], reply: str | None, count: int) -> None:
        """Stop answering commands until `work` is done, then send `count` replies.

        The reply is `reply`, or what `work` returns (the delivery's outcome). Commands
        pipelined meanwhile wait in the buffer, so replies stay in order.
        """
        self._flush()
        self.busy = self._storing = True
        task = asyncio.get_running_loop().create_task(self._resume(work, reply, count))
        self.handler.background.add(task)
        task.add_done_callback(self.handler.background.discard)

    async def _resume(self, work: Awaitable[str | None], reply: str | None, count: int) -> None:
        try:
            outcome = await work
        except Exception as exc:  # the handler answers its own failures; this is a bug
            outcome = reply = self.handler.session_error(exc)
        finally:
            self._storing = False
            self._last = time.monotonic()
        self._answer(reply or outcome or replies.S451_TEMPFAIL, count)
        self.busy = False
        self._flush()
        if self.handler.draining:
            self.close_with(replies.S421_SHUTTING_DOWN)
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self._buf:
            self._run()  # pipelined commands that arrived meanwhile

    def _answer(self, reply: str, recipients: int) -> None:
        """RFC 2033: LMTP answers once per accepted recipient, in RCPT order."""
        for _ in range(recipients if self.lmtp else 1):
            self._reply(reply)


_COMMANDS = {
    "LHLO": Session._lhlo,
    "EHLO": Session._ehlo,
    "HELO": Session._helo,
    "MAIL": Session._mail,
    "RCPT": Session._rcpt,
    "DATA": Session._data,
    "RSET": Session._rset,
    "NOOP": Session._noop,
    "VRFY": Session._vrfy,
    "HELP": Session._help,
    "QUIT": Session._quit,
}
