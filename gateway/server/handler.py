"""What the listeners do with a session: aiosmtpd handler hooks in front of the intake.

Each hook returns the reply; `gateway.failures` names every reply we choose. What
aiosmtpd does not check itself is checked here: the size limit (advertised in EHLO/LHLO,
refused at MAIL when SIZE= declares too much, else after DATA), at most
`MAX_RECIPIENTS` recipients, no null recipient, a sender that is valid UTF-8.

A message is parsed (a big one in a worker thread) and handed to the group-commit
writer; the reply comes after the commit. Any failure is `451 4.3.0` with the cause's
category (`database read-only`; gateway/causes.py), the full cause in the log (an
unexpected one also copies the raw message to the quarantine spool); LMTP answers
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
from gateway.causes import Cause, cause_of
from gateway.daemon import DaemonContext
from gateway.mail.envelope import Envelope
from gateway.mail.queueid import postfix_queue_id
from gateway.mail.size import message_size
from gateway.spool import quarantine
from gateway.status.metrics import PROCESSING_SECONDS

from .groupcommit import GroupCommitter
from .size_refusals import SizeRefusals

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


def envelope_of(envelope: Any) -> Envelope:
    sender = envelope.mail_from or ""
    return Envelope("" if sender == "<>" else sender, tuple(envelope.rcpt_tos))


class BadParameter(ValueError):
    """A MAIL FROM parameter we cannot read (answered 501 5.5.4)."""


def declared_size(options: list[str]) -> int | None:
    """SIZE=n of MAIL FROM, in ASCII digits only (`str.isdigit` also takes `²`)."""
    for option in options:
        key, _eq, value = option.partition("=")
        if key == "SIZE":
            if not (value.isascii() and value.isdigit()):
                raise BadParameter(option)
            return int(value)
    return None


class Refusals:
    """Connections refused for `[lmtp] max_connections`: counted, logged once a minute
    (a flood must not flood the log too)."""

    LOG_INTERVAL = 60.0

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self._logged_at = float("-inf")

    def refused(self, open_now: int) -> None:
        self.ctx.counters["server.connections_refused"] += 1
        now = time.monotonic()
        if now - self._logged_at >= self.LOG_INTERVAL:
            self._logged_at = now
            log.warning("refusing connections with 421: %d open, lmtp.max_connections is %d",
                        open_now, self.ctx.config.lmtp.max_connections)


class DeliveryHandler:
    """aiosmtpd handler hooks plus the connection registry used for a clean shutdown."""

    def __init__(self, ctx: DaemonContext, committer: GroupCommitter, executor: Executor) -> None:
        self.ctx = ctx
        self.committer = committer
        self.executor = executor
        self.connections: set[Connection] = set()
        self.draining = False
        # Sessions being set up for connections the master handed over (worker.py).
        self.background: set[asyncio.Task[None]] = set()
        self.refusals = Refusals(ctx)
        self.size_refusals = SizeRefusals(committer)
        # In a worker process: told when a connection ends, and given each duration
        # (the master serves /metrics), see gateway/server/worker.py.
        self.on_closed: Callable[[], None] | None = None
        self.durations: list[float] | None = None
        self.results: list[bool] | None = None  # stored (True) or 451 (False), in order

    @property
    def size_limit(self) -> int:
        return self.ctx.config.intake.max_message_size  # read per message: a reload may change it

    @property
    def buffer_limit(self) -> int:
        """Bytes a session buffers in DATA before it drops the rest and refuses the message.

        Never below what `handle_DATA` accepts: that check decides, this one bounds memory.
        The limit counts line ends as one byte, the wire carries CRLF and dot-stuffing, so
        a message under the limit can take up to twice its size here (all empty lines).
        """
        return 2 * self.size_limit + 2

    def admit(self, conn: Connection) -> bool:
        """Register a new session, unless `[lmtp] max_connections` are open already."""
        if len(self.connections) >= self.ctx.config.lmtp.max_connections:
            self.refusals.refused(len(self.connections))
            return False
        self.connections.add(conn)
        return True

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
        try:
            size = declared_size(options)
        except BadParameter:
            return failures.S501_BAD_PARAMETER
        if size is not None and size > self.size_limit:
            self.size_rejected(size, Envelope("" if address == "<>" else address, ()))
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
        message = envelope_of(envelope)
        size = message_size(raw)  # line ends count as one byte, as the MTA counted them
        if size > self.size_limit:
            self.size_rejected(size, message)
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
        queue_id = postfix_queue_id(raw) or "-"
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
            config = self.ctx.config
            cause = cause_of(exc, config.database_url, config.database.busy_timeout)
            self._record(False)
            await self._failed(raw, envelope, exc, failure, cause, queue_id,
                               time.monotonic() - started)
            return failures.tempfail_reply(cause.category)
        self.ctx.counters[f"server.{disposition.outcome.value}"] += 1
        duration = time.monotonic() - started
        PROCESSING_SECONDS.labels(entry="lmtp").observe(duration)
        if self.durations is not None:
            self.durations.append(duration)
        self._record(True)
        # What an admin greps for: Postfix's queue ID joins this line to Postfix's own
        # (which names sender, recipients and Message-ID); those are customer data and
        # appear here only at debug level.
        log.info(
            "delivered postfix_id=%s disposition=%s ticket=%s queue=%s recipients=%d size=%d "
            "duration=%.3fs",
            queue_id, disposition.outcome.value,
            disposition.ticket_number or "-", disposition.queue or "-",
            len(envelope.rcpt_tos), len(raw), duration,
        )
        log.debug("delivered postfix_id=%s message_id=<%s> from=<%s> to=%s",
                  queue_id, disposition.message_id,
                  envelope.mail_from or "", ",".join(f"<{r}>" for r in envelope.rcpt_tos))
        return failures.delivered(disposition)

    def _record(self, ok: bool) -> None:
        self.ctx.tempfails.record(ok)
        if self.results is not None:
            self.results.append(ok)

    async def _failed(self, raw: bytes, envelope: Envelope, exc: Exception,
                      failure: failures.Failure, cause: Cause, queue_id: str,
                      duration: float) -> None:
        self.ctx.counters["server.tempfail"] += 1
        if not failure.quarantine:
            log.warning("temporary failure postfix_id=%s duration=%.3fs, answered 451: %s",
                        queue_id, duration, cause.description)
            log.debug("temporary failure: from=<%s> to=%s", envelope.mail_from or "",
                      ",".join(f"<{r}>" for r in envelope.rcpt_tos), exc_info=exc)
            self.ctx.record_error("intake", f"451 {cause.category}: {cause.description}")
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

    def size_rejected(self, size: int, envelope: Envelope) -> None:
        """Record a refused oversize message; the reply does not wait for the record."""
        self.ctx.counters["server.size_rejected"] += 1
        first = self.size_refusals.add(self.ctx.intake.size_rejection(size, envelope))
        # A client repeating its oversize MAIL gets one log line per write, not per try.
        log.log(logging.INFO if first else logging.DEBUG,
                "refused message of %d bytes (limit %d)", size, self.size_limit)

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
