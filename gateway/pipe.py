"""`ticketgate pipe`: one message on stdin, one sysexits code out.

Used by Postfix pipe(8), procmail and .forward. Which failure exits with which code,
and says what on stderr, is `gateway.failures`: 0 stored (or ignored, or a duplicate),
65 empty input, 67 unknown recipient in strict mode, 69 larger than the size limit (the
line starts with `5.3.4`; the MTA bounces it to the sender), 75 anything transient or
unexpected (the MTA keeps the message and retries). No other code may leave this
process: Postfix bounces on unknown codes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import BinaryIO

from gateway.mail.envelope import Envelope
from gateway.mail.size import message_size

from . import failures
from .config import Config
from .failures import Failure

log = logging.getLogger("ticketgate.pipe")

NULL_SENDERS = ("", "<>", "mailer-daemon")


def normalise_sender(sender: str | None) -> str | None:
    """pipe(8) expands the null sender to MAILER-DAEMON by default; map it back to ''."""
    if sender is None:
        return None
    s = sender.strip()
    return "" if s.lower() in NULL_SENDERS else s.strip("<>")


def read_message(stream: BinaryIO, limit: int) -> bytes:
    """Read until the end, or until the message is larger than `limit`: an oversize
    message is detected without reading it all.

    Its size is `message_size` (line ends count as one byte), as the daemon counts it
    after the hand-off's CRLF conversion: what the pipe accepts, the daemon accepts too.
    """
    chunks: list[bytes] = []
    size = 0
    last = b""
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        size += len(chunk) - chunk.count(b"\r\n") - (last == b"\r" and chunk[:1] == b"\n")
        chunks.append(chunk)
        last = chunk[-1:]
    return b"".join(chunks)


def drain(stream: BinaryIO) -> int:
    """Consume the rest of an oversize message (so the MTA sees no broken pipe)."""
    n = 0
    while chunk := stream.read(1 << 20):
        n += len(chunk)
    return n


def cmd_pipe(args: argparse.Namespace) -> int:
    try:
        return _pipe(args, sys.stdin.buffer)
    except BaseException as exc:  # the last line of defence: never another exit code
        if isinstance(exc, SystemExit) and exc.code in failures.PIPE_EXIT_CODES:
            raise
        return _fail(failures.CRASHED)


def _fail(failure: Failure, **facts: object) -> int:
    """One stderr line (pipe(8) copies it into the delivery status), then the exit code."""
    print(failure.line(**facts), file=sys.stderr)
    return failure.exit_code


def _pipe(args: argparse.Namespace, stdin: BinaryIO) -> int:
    from .config import ConfigError, load_config

    started = time.monotonic()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(failures.BAD_CONFIG, error=exc)
    _setup_logging(args.verbose)
    envelope = Envelope(
        normalise_sender(args.sender),
        tuple(r.strip("<>") for r in [*args.recipient, *args.recipients] if r.strip("<>")),
    )
    limit = config.intake.max_message_size
    raw = read_message(stdin, limit)
    if not raw.strip():
        return _fail(failures.EMPTY)
    if message_size(raw) > limit:
        size = message_size(raw) + drain(stdin)
        return _size_rejected(config, size, envelope)

    from .handoff import try_handoff

    handed = try_handoff(config, raw, envelope)
    if handed is not None:
        return handed
    return process_in_process(config, raw, envelope, started)


class _OneLine(logging.Formatter):
    """No tracebacks: pipe(8) copies stderr into the delivery status (and bounces)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"ticketgate pipe: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f" ({type(record.exc_info[1]).__name__})"
        return " ".join(line.split())[:500]


def _setup_logging(verbose: bool) -> None:
    """-v: everything with tracebacks; otherwise warnings as one short line each."""
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_OneLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _size_rejected(config: Config, size: int, envelope: Envelope) -> int:
    """Too large: record the refusal and bounce (DESIGN.md), or 75 if we cannot record it.

    The pipe decides this itself, on the message's bytes as it was given them. With
    `[pipe] require_daemon` the daemon records it if it can (the pipe may not be allowed
    to write the database), else the pipe tries.
    """
    limit = config.intake.max_message_size
    if config.pipe.require_daemon:
        from .handoff import report_size

        if report_size(config, size, envelope):
            return _fail(failures.TOO_BIG, size=size, limit=limit)
    from .runtime import build_intake, open_store

    try:
        store = open_store(config)
        build_intake(config, store).record_size_rejected(size, envelope.as_text())
    except Exception as exc:
        # The refusal must be recorded before the bounce: 75 with the cause, and the
        # MTA asks again (gateway.causes names a bug "internal error" too).
        return _transient(config, exc)
    return _fail(failures.TOO_BIG, size=size, limit=limit)


def _transient(config: Config, exc: BaseException) -> int:
    """75 with the cause (gateway.causes) on the one stderr line pipe(8) passes on."""
    from .causes import cause_of

    cause = cause_of(exc, config.database_url, config.database.busy_timeout)
    log.debug("transient failure", exc_info=exc)
    return _fail(failures.TRANSIENT, cause=cause.description)


def _setup_failed(config: Config, exc: Exception) -> int:
    """The store, rules or templates could not be set up: 75, and no quarantine copy."""
    from rules.errors import RulesError

    if isinstance(exc, RulesError):
        log.error("invalid rules, not accepting mail: %s", exc)
        return _fail(failures.INVALID_RULES)
    failure = failures.failure_of(exc)
    if failure is failures.TRANSIENT:
        return _transient(config, exc)
    log.debug("could not start the intake", exc_info=exc)
    return _fail(failures.CANNOT_START,
                 error="an unexpected error: `ticketgate -v pipe` shows the traceback")


def process_in_process(config: Config, raw: bytes, envelope: Envelope, started: float) -> int:
    from .runtime import build_intake, open_store
    from .spool import quarantine

    try:
        store = open_store(config)
        intake = build_intake(config, store)
    except Exception as exc:
        return _setup_failed(config, exc)
    try:
        if (envelope.rcpt_tos and config.intake.strict_recipients
                and not any(intake.recipient_known(r) for r in envelope.rcpt_tos)):
            return _fail(failures.UNKNOWN_RECIPIENT)
        disposition = intake.process(raw, envelope)
    except Exception as exc:
        failure = failures.failure_of(exc)
        if failure is failures.TRANSIENT:
            return _transient(config, exc)
        try:
            path = quarantine(config.path(config.intake.spool_dir), raw, envelope, exc)
            log.error("unexpected error, message quarantined in %s", path, exc_info=exc)
        except Exception:
            log.exception("unexpected error and the quarantine spool failed too")
        return _fail(failure)
    log.info(
        "message_id=<%s> disposition=%s ticket=%s queue=%s duration=%.3fs",
        disposition.message_id, disposition.outcome.value, disposition.ticket_number,
        disposition.queue, time.monotonic() - started,
    )
    return failures.EXIT_DELIVERED
