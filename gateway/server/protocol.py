"""aiosmtpd's LMTP and SMTP sessions, plus what a clean shutdown needs of them.

Everything about mail (size, recipients, replies) is in the handler's hooks
(`handler.py`). These subclasses only register each connection with the handler, mark
a session busy while it is in DATA (so a stop lets it finish and get its reply) and
close it with 421 when the daemon drains.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from gateway.failures import S421_SHUTTING_DOWN

from .handler import DeliveryHandler


class _Registered:
    """Shared by the LMTP and SMTP classes below."""

    # aiosmtpd's stream limit is also the longest DATA line it accepts; past it the
    # message is refused ("500 Line too long"). A malformed message is stored, not
    # refused, so lines may be as long as a message may be big.
    line_length_limit = 1 << 16

    event_handler: DeliveryHandler
    transport: asyncio.BaseTransport | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.busy = False

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
