"""aiosmtpd's LMTP and SMTP sessions, plus what a clean shutdown needs of them.

Everything about mail (size, recipients, replies) is in the handler's hooks
(`handler.py`). These subclasses only register each connection with the handler (and
refuse one past `[lmtp] max_connections` with 421), mark a session busy while it is in
DATA (so a stop lets it finish and get its reply), close it with 421 when the daemon
drains, and mend aiosmtpd's own replies through the documented `push` and
`smtp_<COMMAND>` overrides: they get the enhanced status code that advertising
ENHANCEDSTATUSCODES promises (RFC 2034), never echo a client's control bytes, and in
LMTP come once per recipient after DATA (RFC 2033).

DATA is buffered in memory up to the handler's `buffer_limit` only (the wire form of
a message at the size limit): aiosmtpd's `data_size_limit`, set for the DATA command,
makes it drop the rest and answer 552, which becomes our `552 5.3.4` with the refusal
recorded. So a session holds about `[intake] max_message_size` bytes of ordinary mail
(twice that in memory: aiosmtpd keeps it line by line), and the daemon
`[lmtp] max_connections` times that.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, syntax

from gateway import failures
from gateway.failures import S421_SHUTTING_DOWN

from .handler import DeliveryHandler, envelope_of

# RFC 3463 codes for the reply codes aiosmtpd answers with by itself; others get X.0.0.
_DETAIL = {
    "421": "4.3.2", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "552": "5.3.4", "553": "5.1.3", "555": "5.5.4",
}
_HAS_DETAIL = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
# What a reply must not carry: aiosmtpd quotes an unknown command as sent, and a
# client's ESC or NUL would reach the peer's log or terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(status: str) -> str:
    """`status` with every control character of each line replaced by `?`."""
    return "\r\n".join(_CONTROL.sub("?", line) for line in status.split("\r\n"))


def enhanced(status: str) -> str:
    """`status` with an enhanced code after each line's reply code where it has none.

    Left alone: the 220 greeting and 3xx replies (intermediate, e.g. 354 and AUTH
    challenges), as RFC 2034 asks; HELO/EHLO/LHLO replies are left alone by the caller.
    """
    lines = []
    for line in status.split("\r\n"):
        code = line[:3]
        if (code.isdigit() and code[0] in "245" and code != "220" and line[3:4] in (" ", "-")
                and not _HAS_DETAIL.match(line)):
            line = f"{line[:4]}{_DETAIL.get(code, code[0] + '.0.0')} {line[4:]}".rstrip()
        lines.append(line)
    return "\r\n".join(lines)


class _Registered:
    """Shared by the LMTP and SMTP classes below."""

    # aiosmtpd's stream limit, which is also the longest DATA line it accepts (a longer
    # one gets "500 Line too long"). RFC 5321 says 1000 octets, but a malformed message
    # is stored, not refused. Not higher: the stream buffers up to twice this much.
    line_length_limit = 1 << 16

    busy = False  # in DATA: a stop lets the session finish and get its replies
    greeting = False  # answering HELO/EHLO/LHLO: those replies carry no enhanced codes
    receiving = False  # 354 sent: the message's bytes are arriving
    received = 0  # bytes of the message so far (what a refusal records as its size)
    event_handler: DeliveryHandler
    transport: asyncio.BaseTransport | None
    envelope: Any
    data_size_limit: int | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self.event_handler.draining:
            self.close_with(S421_SHUTTING_DOWN)
            return
        if not self.event_handler.admit(self):
            self.close_with(failures.S421_TOO_MANY_CONNECTIONS)

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.closed(self)
        super().connection_lost(error)  # type: ignore[misc]

    def close_with(self, reply: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.receiving:
            self.received += len(data)
        super().data_received(data)  # type: ignore[misc]

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = printable(status)
            if self.receiving:
                status = self._data_reply(status)
            elif status.startswith("354"):
                self.receiving, self.received = True, 0
            if not self.greeting:
                status = enhanced(status)
        await super().push(status)  # type: ignore[misc]

    def _data_reply(self, status: str) -> str:
        """The reply that ends DATA; aiosmtpd's own (no enhanced code) mended.

        Ours come from the handler, already one per recipient. aiosmtpd answers by itself
        when the message outgrew the buffer (552: refused and recorded like any oversize
        message) or had a line past `line_length_limit` (500), and only once.
        """
        self.receiving = False
        if _HAS_DETAIL.match(status):
            return status
        rcpts = list(self.envelope.rcpt_tos)
        if status.startswith("552"):
            status = failures.TOO_BIG.reply
            # What arrived, less the final ".\r\n" (dot-stuffing included: an estimate).
            self.event_handler.size_rejected(max(0, self.received - 3),
                                             envelope_of(self.envelope))
        if isinstance(self, LMTP):
            status = "\r\n".join([status] * max(1, len(rcpts)))
        return status

    async def _greet(self, reply: Awaitable[None]) -> None:
        self.greeting = True
        try:
            await reply
        finally:
            self.greeting = False

    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA, marked busy from the command to the replies.

        Only here is aiosmtpd's own size limit in force: at MAIL and in EHLO/LHLO the
        handler's hooks apply (and record) the limit, which a reload may change.
        """
        self.busy = True
        self.data_size_limit = self.event_handler.buffer_limit
        try:
            await super().smtp_DATA(arg)  # type: ignore[misc]
        finally:
            self.busy = self.receiving = False
            self.data_size_limit = None
        if self.event_handler.draining:
            self.close_with(S421_SHUTTING_DOWN)


class IntakeLMTP(_Registered, LMTP):
    @syntax("LHLO hostname")
    async def smtp_LHLO(self, arg: str) -> None:
        await self._greet(super().smtp_LHLO(arg))


class IntakeSMTP(_Registered, SMTP):
    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        await self._greet(super().smtp_HELO(hostname))

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greet(super().smtp_EHLO(hostname))
