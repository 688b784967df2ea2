"""aiosmtpd's LMTP and SMTP sessions, plus what a clean shutdown needs of them.

Everything about mail (size, recipients, replies) is in the handler's hooks
(`handler.py`). These subclasses only register each connection with the handler, mark
a session busy while it is in DATA (so a stop lets it finish and get its reply), close
it with 421 when the daemon drains, and give aiosmtpd's own replies the enhanced status
code that advertising ENHANCEDSTATUSCODES promises (RFC 2034), through the documented
`push` and `smtp_<COMMAND>` overrides.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, syntax

from gateway.failures import S421_SHUTTING_DOWN

from .handler import DeliveryHandler

# RFC 3463 codes for the reply codes aiosmtpd answers with by itself; others get X.0.0.
_DETAIL = {
    "421": "4.3.2", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "552": "5.3.4", "553": "5.1.3", "555": "5.5.4",
}
_HAS_DETAIL = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


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
    event_handler: DeliveryHandler
    transport: asyncio.BaseTransport | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self.event_handler.draining:
            self.close_with(S421_SHUTTING_DOWN)
            return
        self.event_handler.connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.closed(self)
        super().connection_lost(error)  # type: ignore[misc]

    def close_with(self, reply: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
            transport.close()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and not self.greeting:
            status = enhanced(status)
        await super().push(status)  # type: ignore[misc]

    async def _greet(self, reply: Awaitable[None]) -> None:
        self.greeting = True
        try:
            await reply
        finally:
            self.greeting = False

    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA, marked busy from the command to the replies."""
        self.busy = True
        try:
            await super().smtp_DATA(arg)  # type: ignore[misc]
        finally:
            self.busy = False
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
