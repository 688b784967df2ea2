"""What the listeners do with a message: recipient checks, intake, one log line.

The handler is the only place that turns intake results or failures into replies.
Parsing and storing run in the group-commit writer thread (messages over 256 KiB are
parsed in a worker thread first), so the event loop only moves bytes. Any failure
becomes `451 4.3.0` without detail; an unexpected one also copies the raw message to
the quarantine spool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from gateway.daemon import DaemonContext
from gateway.mail.envelope import Envelope
from gateway.spool import quarantine
from gateway.status.metrics import PROCESSING_SECONDS

from . import replies
from .groupcommit import GroupCommitter

if TYPE_CHECKING:
    from .protocol import IntakeProtocolMixin
    from .session import Session

log = logging.getLogger("ticketgate.server")

# Messages up to this size are parsed by the group-commit writer itself (fewer thread
# hand-offs, measured cheaper); larger ones in a worker thread, so parsing one big
# message does not hold up the commits of small ones.
INLINE_PREPARE_MAX = 256 * 1024


class DeliveryHandler:
    """aiosmtpd handler hooks plus the connection registry used for a clean shutdown."""

    def __init__(self, ctx: DaemonContext, committer: GroupCommitter, executor: Executor) -> None:
        self.ctx = ctx
        self.committer = committer
        self.executor = executor
        self.connections: set[IntakeProtocolMixin | Session] = set()
        # Fire-and-forget tasks (size-rejection events) kept referenced until done.
        self.background: set[asyncio.Task[None]] = set()
        self.draining = False
        self.in_flight = 0
        self._seconds = PROCESSING_SECONDS.labels(entry="lmtp")  # looked up once, not per message
        # In a worker process: told when a connection ends, and given each duration
        # (the master serves /metrics), see gateway/server/worker.py.
        self.on_closed: Callable[[], None] | None = None
        self.durations: list[float] | None = None

    # -- aiosmtpd hooks ------------------------------------------------------------------

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.S250_SENDER_OK

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.recipient(address, envelope.rcpt_tos)
        if reply == replies.S250_RECIPIENT_OK:
            envelope.rcpt_options.extend(options)
        return reply

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd would answer 500 with the exception text: say 451 and log instead."""
        return self.session_error(error)

    # -- shared by both session engines -------------------------------------------------------

    def recipient(self, address: str, accepted: list[str]) -> str:
        """The reply to RCPT; an accepted address is appended to `accepted`."""
        if not self.ctx.intake.recipient_accepted(address):
            log.debug("refused unknown recipient <%s>", address)
            self.ctx.counters["server.unknown_recipient"] += 1
            return replies.S550_NO_SUCH_USER
        accepted.append(address)
        return replies.S250_RECIPIENT_OK

    def session_error(self, error: Exception) -> str:
        """A bug or failure inside a session: logged, counted, answered 451 without detail."""
        log.error("session error: %s", type(error).__name__, exc_info=error)
        self.ctx.counters["server.tempfail"] += 1
        return replies.S451_TEMPFAIL

    # -- messages ---------------------------------------------------------------------------

    async def deliver(self, raw: bytes, envelope: Envelope) -> str:
        """Store one message; the reply every accepted recipient gets."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        intake = self.ctx.intake  # one config for the whole message, even across a reload
        self.in_flight += 1
        try:
            if len(raw) <= INLINE_PREPARE_MAX:
                disposition = await self.committer.prepare_and_store(intake, raw, envelope)
            else:
                prepared = await loop.run_in_executor(self.executor, intake.prepare, raw,
                                                      envelope)
                disposition = await self.committer.store(intake, prepared)
        except Exception as exc:
            await self._failed(raw, envelope, exc)
            return replies.S451_TEMPFAIL
        finally:
            self.in_flight -= 1
        self.ctx.counters[f"server.{disposition.outcome.value}"] += 1
        duration = time.monotonic() - started
        self._seconds.observe(duration)
        if self.durations is not None:
            self.durations.append(duration)
        log.info(
            "message_id=<%s> disposition=%s ticket=%s queue=%s recipients=%d size=%d "
            "duration=%.3fs",
            disposition.message_id, disposition.outcome.value, disposition.ticket_number or "-",
            disposition.queue or "-", len(envelope.rcpt_tos), len(raw), duration,
        )
        log.debug("message_id=<%s> from=<%s> to=%s", disposition.message_id,
                  envelope.mail_from or "", ",".join(f"<{r}>" for r in envelope.rcpt_tos))
        return replies.delivered(disposition)

    async def _failed(self, raw: bytes, envelope: Envelope, exc: Exception) -> None:
        from ticketstore.db import is_transient

        self.ctx.counters["server.tempfail"] += 1
        if is_transient(exc):
            log.warning("temporary failure, answered 451: %s", type(exc).__name__)
            return
        config = self.ctx.config
        loop = asyncio.get_running_loop()
        try:
            path = await loop.run_in_executor(
                self.executor, quarantine, config.path(config.intake.spool_dir), raw, envelope, exc
            )
        except Exception:
            log.exception("unexpected error and the quarantine spool failed too")
            self.ctx.record_error("intake", f"{type(exc).__name__} (quarantine failed)")
            return
        log.error("unexpected error, answered 451, message quarantined in %s", path,
                  exc_info=exc)
        self.ctx.record_error("intake", f"{type(exc).__name__}: quarantined {path.name}")

    async def size_rejected(self, size: int, envelope: Envelope) -> None:
        """Record a refused oversize message (best effort: the refusal stands regardless)."""
        self.ctx.counters["server.size_rejected"] += 1
        log.info("refused message of %d bytes (limit %d)", size,
                 self.ctx.config.intake.max_message_size)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.executor, self.ctx.intake.record_size_rejected, size, envelope
            )
        except Exception as exc:
            log.warning("could not record size rejection: %s", type(exc).__name__)

    # -- shutdown -------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Close idle connections with 421; busy ones close after their replies."""
        self.draining = True
        for conn in list(self.connections):
            if not conn.busy:
                conn.close_with(replies.S421_SHUTTING_DOWN)

    def closed(self, conn: IntakeProtocolMixin | Session) -> None:
        """A session ended (both engines call this from connection_lost)."""
        self.connections.discard(conn)
        if self.on_closed is not None:
            self.on_closed()

    def idle(self) -> bool:
        return self.in_flight == 0 and not any(c.busy for c in self.connections)
