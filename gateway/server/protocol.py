"""aiosmtpd's LMTP and SMTP sessions, plus what a clean shutdown needs of them.

Everything about mail (size, recipients, replies) is in the handler's hooks
(`handler.py`). These subclasses only register each connection with the handler, mark
a session busy while it is in DATA (so a stop lets it finish and get its reply) and
close it with 421 when the daemon drains.
"""

from __future__ import annotations

import asyncio

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from gateway.failures import S421_SHUTTING_DOWN

from .handler import DeliveryHandler


class _Registered:
    """Shared by the LMTP and SMTP classes below."""

    # aiosmtpd's stream limit, which is also the longest DATA line it accepts (a longer
    # one gets "500 Line too long"). RFC 5321 says 1000 octets, but a malformed message
    # is stored, not refused. Not higher: the stream buffers up to twice this much.
    line_length_limit = 1 << 16

    busy = False  # in DATA: a stop lets the session finish and get its replies
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
    pass


class IntakeSMTP(_Registered, SMTP):
    pass
