"""What the listeners do with a session: aiosmtpd handler hooks in front of the intake.

Each hook returns the reply; `gateway.failures` names every reply we choose. What
aiosmtpd does not check itself is checked here: the size limit (advertised in EHLO/LHLO,
refused at MAIL when SIZE= declares too much, else after DATA), at most
`MAX_RECIPIENTS` recipients, no null recipient, a sender that is valid UTF-8.

A message is parsed (a big one in a worker thread) and handed to the group-commit
writer; the reply comes after the commit. Any failure is `451 4.3.0` without detail
(an unexpected one also copies the raw message to the quarantine spool); LMTP answers
once per accepted recipient (RFC 2033).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from aiosmtpd.lmtp import LMTP

from gateway import failures
from gateway.daemon import DaemonContext
from gateway.mail.envelope import Envelope
from gateway.spool import quarantine
from gateway.status.metrics import PROCESSING_SECONDS

from .groupcommit import GroupCommitter

log = logging.getLogger("ticketgate.server")

# Messages up to this size are parsed on the event loop: handing one to a thread costs
# more CPU (thread switches, GIL hand-offs) than parsing it. A bigger one is parsed in a
# worker thread, so that it does not hold up the other sessions.
INLINE_PREPARE_MAX = 256 * 1024
MAX_RECIPIENTS = 1000  # RFC 5321 4.5.3.1.8 asks for at least 100
# EHLO/LHLO keywords aiosmtpd does not announce although they hold: it answers pipelined
# commands in order, and every reply ticketgate chooses carries an enhanced status code.
EXTRA_KEYWORDS = ("PIPELINING", "ENHANCEDSTATUSCODES")


class Connection(Protocol):
    """A session as the shutdown sees it (see protocol.py)."""

    busy: bool

    def close_with(self, reply: str) -> None: ...


def _envelope_of(envelope: Any) -> Envelope:
    sender = envelope.mail_from or ""
    return Envelope("" if sender == "<>" else sender, tuple(envelope.rcpt_tos))


def _declared_size(options: list[str]) -> int | None:
    """SIZE=n of MAIL FROM (aiosmtpd has checked it is digits)."""
    for option in options:
        key, _eq, value = option.partition("=")
        if key == "SIZE" and value.isdigit():
            return int(value)
    return None


class DeliveryHandler:
    """aiosmtpd handler hooks plus the connection registry used for a clean shutdown."""

    def __init__(self, ctx: DaemonContext, committer: GroupCommitter, executor: Executor) -> None:
        self.ctx = ctx
        self.committer = committer
        self.executor = executor
        self.connections: set[Connection] = set()
        self.draining = False
        # In a worker process: told when a connection ends, and given each duration
        # (the master serves /metrics), see gateway/server/worker.py.
        self.on_closed: Callable[[], None] | None = None
        self.durations: list[float] | None = None

    @property
    def size_limit(self) -> int:
        return self.ctx.config.intake.max_message_size  # read per message: a reload may change it

    # -- aiosmtpd hooks ---------------------------------------------------------------------

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [responses[0], *(f"250-{k}" for k in (*EXTRA_KEYWORDS, f"SIZE {self.size_limit}")),
                *responses[1:]]

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        try:
            address.encode("utf-8")
        except UnicodeEncodeError:  # aiosmtpd keeps undecodable bytes as surrogates
            return failures.S553_SENDER_NOT_UTF8
        if not address.isascii() and "SMTPUTF8" not in options:
            return failures.S553_NEEDS_SMTPUTF8
        size = _declared_size(options)
        if size is not None and size > self.size_limit:
            await self.size_rejected(size, Envelope("" if address == "<>" else address, ()))
            return failures.S552_TOO_BIG
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return failures.S250_SENDER_OK

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address == "<>":
            return failures.S501_EMPTY_RECIPIENT
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return failures.S452_TOO_MANY_RECIPIENTS
        if not self.ctx.intake.recipient_accepted(address):
            log.debug("refused unknown recipient <%s>", address)
            self.ctx.counters["server.unknown_recipient"] += 1
            return failures.UNKNOWN_RECIPIENT.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return failures.S250_RECIPIENT_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content
        message = _envelope_of(envelope)
        if len(raw) > self.size_limit:
            await self.size_rejected(len(raw), message)
            reply = failures.TOO_BIG.reply
        else:
            reply = await self.deliver(raw, message)
        # RFC 2033: LMTP answers once per accepted recipient, in RCPT order.
        return "\r\n".join([reply] * (len(message.rcpt_tos) if isinstance(server, LMTP) else 1))

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd would answer 500 with the exception text: say 451 and log instead."""
        log.error("session error: %s", type(error).__name__, exc_info=error)
        self.ctx.counters["server.tempfail"] += 1
        return failures.S451_TEMPFAIL

    # -- messages ---------------------------------------------------------------------------

    async def deliver(self, raw: bytes, envelope: Envelope) -> str:
        """Store one message; the reply every accepted recipient gets."""
        started = time.monotonic()
        intake = self.ctx.intake  # one config for the whole message, even across a reload
        try:
            if len(raw) <= INLINE_PREPARE_MAX and not intake.prepare_may_block(raw):
                prepared = intake.prepare(raw, envelope)
            else:
                prepared = await asyncio.get_running_loop().run_in_executor(
                    self.executor, intake.prepare, raw, envelope)
            disposition = await self.committer.store(intake, prepared)
        except Exception as exc:
            failure = failures.failure_of(exc)
            await self._failed(raw, envelope, exc, failure)
            return failure.reply
        self.ctx.counters[f"server.{disposition.outcome.value}"] += 1
        duration = time.monotonic() - started
        PROCESSING_SECONDS.labels(entry="lmtp").observe(duration)
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
        return failures.delivered(disposition)

    async def _failed(self, raw: bytes, envelope: Envelope, exc: Exception,
                      failure: failures.Failure) -> None:
        self.ctx.counters["server.tempfail"] += 1
        if not failure.quarantine:
            log.warning("temporary failure, answered 451: %s", type(exc).__name__)
            return
        config = self.ctx.config
        try:
            path = await asyncio.get_running_loop().run_in_executor(
                self.executor, quarantine, config.path(config.intake.spool_dir), raw, envelope, exc)
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
        log.info("refused message of %d bytes (limit %d)", size, self.size_limit)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.ctx.intake.record_size_rejected, size, envelope)
        except Exception as exc:
            log.warning("could not record size rejection: %s", type(exc).__name__)

    # -- shutdown -------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Close idle connections with 421; busy ones close after their replies."""
        self.draining = True
        for conn in list(self.connections):
            if not conn.busy:
                conn.close_with(failures.S421_SHUTTING_DOWN)

    def closed(self, conn: Connection) -> None:
        """A session ended (called from its connection_lost)."""
        self.connections.discard(conn)
        if self.on_closed is not None:
            self.on_closed()

    def idle(self) -> bool:
        return not any(c.busy for c in self.connections)
