"""Deliver the outbox to the smarthost: claim, send, mark; retry with backoff.

Exactly once in normal operation: a row is *claimed* (pending -> sending, attempts + 1,
a lease of `[outbound] lease` seconds until `next_attempt_at`) in its own committed
transaction with a conditional UPDATE, so two workers (the daemon and a `ticketgate
outbox send` from a timer, or the gateways of several MX hosts) can never both own it.
Only the owner sends, then marks it sent. A worker starts no send with less than
`[outbound] timeout` left of its lease: the rows it did not get to go back to pending.

A mark the database refuses (it restarted or went away just then) is kept, in memory and
in the spool (sentmarks.py), and written before anything new is claimed: the row is not
sent twice. If the process dies between the smarthost's 250 and the mark, the row stays
"sending" until its lease runs out and is sent again then: the duplicates we accept
instead of losing mail (at most MARK_EVERY, as sent rows are marked in small groups).

4xx replies and connection errors put the row back to pending with exponential backoff
(`retry_base` * 2^(attempts-1), at most `retry_max`) until `max_attempts`; a 5xx reply
fails it at once with the reply kept in `last_error` and an `outbox-failed` event.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import smtplib
import socket
import ssl
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Config, OutboundConfig
from ticketstore.models import Event, OutboxMessage, utcnow
from ticketstore.writelock import WriterLock, writer_lock_for

from .dkim_sign import DkimError, DkimSigner
from .sent import record_sent
from .sentmarks import KeptMarks, SentMark

log = logging.getLogger("ticketgate.outbox")

BATCH = 20
# Sent rows are marked in groups of this many (one write transaction each, so the worker
# does not compete with the intake for the database on every message). A crash can thus
# resend at most this many messages, after their lease.
MARK_EVERY = 10


class PermanentFailure(Exception):
    """The smarthost refused for good (5xx): do not retry."""


class TemporaryFailure(Exception):
    """4xx or no connection: try again later."""


class Sender(Protocol):
    """One SMTP session; `send` raises PermanentFailure or TemporaryFailure."""

    def send(self, mail_from: str, rcpt_to: str, data: bytes) -> None: ...

    def close(self) -> None: ...


def split_hostport(value: str, default_port: int = 25) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def read_password(path: str, config: Config) -> str:
    if not path:
        return ""
    try:
        return config.path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TemporaryFailure(f"cannot read password_file: {exc.strerror}") from None


def _smtp_error(code: int, reply: bytes | str, what: str) -> Exception:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    message = f"{what}: {code} {text}".strip()
    return PermanentFailure(message) if 500 <= code < 600 else TemporaryFailure(message)


@functools.cache
def _fqdn() -> str:
    return socket.getfqdn()


class SmtpSender:
    """A connection to the smarthost, opened lazily and reused for a batch."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.out: OutboundConfig = config.outbound
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        host, port = split_hostport(self.out.smarthost)
        helo = self.out.helo or _fqdn()
        smtp = smtplib.SMTP(local_hostname=helo, timeout=self.out.timeout)
        try:
            smtp.connect(host, port)
            smtp.ehlo()
            if self.out.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.out.username:
                smtp.login(self.out.username, read_password(self.out.password_file, self.config))
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _open(self) -> smtplib.SMTP:
        try:
            return self._connect()
        except smtplib.SMTPAuthenticationError as exc:
            # Wrong credentials are an admin's mistake to fix, not a reason to drop mail.
            raise TemporaryFailure(f"AUTH refused: {exc.smtp_code}") from None
        except smtplib.SMTPResponseException as exc:
            raise TemporaryFailure(f"smarthost: {exc.smtp_code} "
                                   f"{exc.smtp_error.decode('utf-8', 'replace')}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"cannot connect to {self.out.smarthost}: "
                                   f"{type(exc).__name__}: {exc}") from None

    def send(self, mail_from: str, rcpt_to: str, data: bytes) -> None:
        if self._smtp is None:
            self._smtp = self._open()
        try:
            refused = self._smtp.sendmail(mail_from, [rcpt_to], data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(rcpt_to, (451, b"refused"))
            self._reset()
            raise _smtp_error(code, reply, "RCPT") from None
        except smtplib.SMTPSenderRefused as exc:
            self._reset()
            raise _smtp_error(exc.smtp_code, exc.smtp_error, "MAIL FROM") from None
        except smtplib.SMTPDataError as exc:
            self._reset()
            raise _smtp_error(exc.smtp_code, exc.smtp_error, "DATA") from None
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None
        if refused:
            code, reply = refused.get(rcpt_to, (451, b"refused"))
            raise _smtp_error(code, reply, "RCPT")

    def _reset(self) -> None:
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self.close()

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                self._smtp.close()
            self._smtp = None


@dataclass
class Result:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def __add__(self, other: Result) -> Result:
        return Result(self.sent + other.sent, self.retried + other.retried,
                      self.failed + other.failed, self.errors + other.errors)


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


class Outbox:
    """Delivery of due outbox rows; shared by the daemon's worker and the CLI."""

    def __init__(self, config: Config, factory: sessionmaker[Session],
                 sender_factory: Callable[[], Sender] | None = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.config = config
        self.factory = factory
        self.sender_factory: Callable[[], Sender] = sender_factory or (
            lambda: SmtpSender(config))
        self.clock = clock
        self.lease = dt.timedelta(seconds=config.outbound.lease)
        self._signer: DkimSigner | None = None
        # Marks of sent rows the database has not taken yet (by outbox id); those of an
        # earlier process are read from the spool on the first round.
        self.kept = KeptMarks(config.path(config.intake.spool_dir))
        self._unmarked: dict[int, SentMark] | None = None

    @functools.cached_property
    def _lock(self) -> WriterLock | None:
        """Opened on first write (`outbox list` never needs it), closed with the Outbox."""
        lock = writer_lock_for(self.factory.kw["bind"])
        if lock is not None:
            weakref.finalize(self, lock.close)
        return lock

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write transaction, taken in turn with the intake's writers (SQLite).

        The intake's worker processes queue for the database on a lock file
        (ticketstore/writelock.py). A writer that skipped that queue would make the
        lock's holder wait in SQLite's busy handler, which sleeps 1-10 ms at a time while
        every other worker waits behind it. Our own lock (own file descriptor), so it
        also excludes a writer of this process.
        """
        with self._lock or nullcontext(), self.factory() as session, session.begin():
            yield session

    # -- claiming -------------------------------------------------------------------------

    def claim(self, limit: int = BATCH) -> list[OutboxMessage]:
        """Take up to `limit` due rows (pending, or sending with an expired lease)."""
        now = self.clock()
        with self._writing() as session:
            candidates = session.execute(
                select(OutboxMessage.id, OutboxMessage.state, OutboxMessage.attempts)
                .where(or_(OutboxMessage.state == "pending", OutboxMessage.state == "sending"),
                       OutboxMessage.next_attempt_at <= now)
                .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
                .limit(limit)
            ).all()
            claimed: list[int] = []
            for row in candidates:
                res = session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == row.id, OutboxMessage.state == row.state,
                           OutboxMessage.attempts == row.attempts)
                    .values(state="sending", attempts=row.attempts + 1,
                            next_attempt_at=now + self.lease)
                )
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(row.id)
            if not claimed:
                return []
            rows = session.execute(
                select(OutboxMessage).where(OutboxMessage.id.in_(claimed))
                .order_by(OutboxMessage.id)
            ).scalars().all()
            return list(rows)

    # -- delivering -----------------------------------------------------------------------

    def deliver_due(self, limit: int = BATCH) -> Result:
        """Write kept marks, then claim and send one batch over one SMTP session."""
        self.write_kept_marks()
        rows = self.claim(limit)
        if not rows:
            return Result()
        # No send starts that could still be running when the lease runs out.
        last_start = self.clock() + self.lease - dt.timedelta(seconds=self.config.outbound.timeout)
        result = Result()
        sent: list[tuple[OutboxMessage, bytes]] = []
        sender = self.sender_factory()
        try:
            for i, row in enumerate(rows):
                if self.clock() >= last_start:
                    self._release(rows[i:])
                    break
                res, data = self._deliver_one(sender, row)
                result += res
                if data is not None:
                    sent.append((row, data))
                if len(sent) >= MARK_EVERY:
                    marking, sent = sent, []
                    self._mark_sent(marking)
        finally:
            try:
                self._mark_sent(sent)
            finally:
                sender.close()
        return result

    def run_until_idle(self, max_batches: int = 1000) -> Result:
        """Deliver batches until nothing is due (`ticketgate outbox send`)."""
        total = Result()
        for _ in range(max_batches):
            res = self.deliver_due()
            total += res
            if res.sent + res.retried + res.failed == 0 or (res.retried and not res.sent):
                break
        return total

    def _deliver_one(self, sender: Sender, row: OutboxMessage) -> tuple[Result, bytes | None]:
        """The outcome, and the bytes the smarthost accepted (None unless it did)."""
        try:
            data = self._sign(row.message)
            sender.send(row.mail_from, row.rcpt_to, data)
        except PermanentFailure as exc:
            self._fail(row, str(exc))
            return Result(failed=1, errors=[f"outbox #{row.id}: {exc}"]), None
        except (TemporaryFailure, DkimError) as exc:
            if row.attempts >= self.config.outbound.max_attempts:
                self._fail(row, f"gave up after {row.attempts} attempts: {exc}")
                return Result(failed=1, errors=[f"outbox #{row.id}: {exc}"]), None
            self._retry(row, str(exc))
            return Result(retried=1, errors=[f"outbox #{row.id}: {exc}"]), None
        log.debug("outbox #%s sent to %s", row.id, row.rcpt_to)
        return Result(sent=1), data

    def _mark_sent(self, sent: list[tuple[OutboxMessage, bytes]]) -> None:
        """Mark rows sent and record them on their tickets (sent.py), in one transaction.

        Only a row still ours ("sending") is recorded: one whose lease ran out and that
        another worker took over gets its article from that worker. If the transaction
        fails, the marks are kept (in the spool too) for `write_kept_marks`.
        """
        if not sent:
            return
        now = self.clock()
        try:
            with self._writing() as session:
                for row, data in sent:
                    res = session.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id == row.id, OutboxMessage.state == "sending")
                        .values(state="sent", sent_at=now, last_error="")
                    )
                    if res.rowcount == 1:  # type: ignore[attr-defined]
                        record_sent(session, row, data, now)
        except Exception:
            marks = [SentMark(row.id, now, data) for row, data in sent]
            self._unmarked_marks().update((m.outbox_id, m) for m in marks)
            self.kept.keep(marks)
            log.warning("outbox: %d sent message(s) could not be marked sent; the marks "
                        "are kept and written when the database is back", len(marks))
            raise

    def _unmarked_marks(self) -> dict[int, SentMark]:
        if self._unmarked is None:
            self._unmarked = {m.outbox_id: m for m in self.kept.load()}
        return self._unmarked

    def write_kept_marks(self) -> int:
        """Mark the rows of kept marks sent (unless marked already); how many were kept.

        Raises while the database still refuses: nothing new is claimed until then. A
        row another worker took over meanwhile (not "sent" yet) is marked all the same:
        it did go out.
        """
        marks = self._unmarked_marks()
        if not marks:
            return 0
        with self._writing() as session:
            for mark in marks.values():
                row = session.get(OutboxMessage, mark.outbox_id)
                if row is None or row.state == "sent":
                    continue
                res = session.execute(  # conditional: a CLI run may write the same marks
                    update(OutboxMessage)
                    .where(OutboxMessage.id == row.id, OutboxMessage.state != "sent")
                    .values(state="sent", sent_at=mark.sent_at, last_error=""))
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    record_sent(session, row, mark.data, mark.sent_at)
        done = list(marks)
        self.kept.drop(done)
        marks.clear()
        log.info("outbox: %d kept sent mark(s) written", len(done))
        return len(done)

    def _release(self, rows: list[OutboxMessage]) -> None:
        """Give back claimed rows not sent (the lease is nearly over): due again now."""
        with self._writing() as session:
            for row in rows:
                session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == row.id, OutboxMessage.state == "sending",
                           OutboxMessage.attempts == row.attempts)
                    .values(state="pending", attempts=row.attempts - 1,
                            next_attempt_at=self.clock()))

    def _sign(self, message: bytes) -> bytes:
        d = self.config.outbound.dkim
        if not d.domain:
            return message
        if self._signer is None:
            self._signer = DkimSigner.from_file(d.domain, d.selector, self.config.path(d.key_file))
        return self._signer.sign(message)

    def _mark(self, row_id: int, **values: object) -> None:
        with self._writing() as session:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id, OutboxMessage.state == "sending")
                .values(**values)
            )

    def _retry(self, row: OutboxMessage, error: str) -> None:
        o = self.config.outbound
        delay = backoff(row.attempts, o.retry_base, o.retry_max)
        self._mark(row.id, state="pending", last_error=error[:2000],
                   next_attempt_at=self.clock() + dt.timedelta(seconds=delay))
        log.info("outbox #%s: temporary failure, retry in %.0fs", row.id, delay)
        log.debug("outbox #%s: %s", row.id, error)

    def _fail(self, row: OutboxMessage, error: str) -> None:
        now = self.clock()
        with self._writing() as session:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, OutboxMessage.state == "sending")
                .values(state="failed", last_error=error[:2000])
            )
            session.add(Event(ticket_id=row.ticket_id, article_id=row.article_id,
                              kind="outbox-failed", created_at=now,
                              detail={"outbox_id": row.id, "kind": row.kind,
                                      "error": error[:500]}))
        log.warning("outbox #%s failed (see `ticketgate outbox list`)", row.id)
        log.debug("outbox #%s: %s", row.id, error)

    # -- admin ----------------------------------------------------------------------------

    def retry(self, row_id: int) -> bool:
        """Put a failed (or pending) entry back in line now. False: no such entry/state."""
        with self._writing() as session:
            res = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id,
                       OutboxMessage.state.in_(("failed", "pending")))
                .values(state="pending", attempts=0, next_attempt_at=self.clock())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

