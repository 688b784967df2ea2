"""`ticketgate pipe`: one message on stdin, one sysexits code out.

Used by Postfix pipe(8), procmail and .forward. Exit codes follow DESIGN.md:
0 stored (or ignored, or a duplicate), 65 empty input, 67 unknown recipient in strict
mode, 75 anything transient or unexpected (the MTA keeps the message and retries).
No other code may leave this process: Postfix bounces on unknown codes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import BinaryIO

from gateway.mail.envelope import Envelope

from .config import Config
from .sysexits import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL

log = logging.getLogger("ticketgate.pipe")

NULL_SENDERS = ("", "<>", "mailer-daemon")


def normalise_sender(sender: str | None) -> str | None:
    """pipe(8) expands the null sender to MAILER-DAEMON by default; map it back to ''."""
    if sender is None:
        return None
    s = sender.strip()
    return "" if s.lower() in NULL_SENDERS else s.strip("<>")


def read_message(stream: BinaryIO, limit: int) -> bytes:
    """Read at most limit+1 bytes, so an oversize message is detected without reading it all."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
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
        if isinstance(exc, SystemExit) and exc.code in (EX_OK, EX_DATAERR, EX_NOUSER,
                                                         EX_TEMPFAIL):
            raise
        print("ticketgate pipe: temporary failure, message not accepted", file=sys.stderr)
        return EX_TEMPFAIL


def _pipe(args: argparse.Namespace, stdin: BinaryIO) -> int:
    from .config import ConfigError, load_config

    started = time.monotonic()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"ticketgate pipe: config error: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    _setup_logging(args.verbose)
    envelope = Envelope(
        normalise_sender(args.sender),
        tuple(r.strip("<>") for r in [*args.recipient, *args.recipients] if r.strip("<>")),
    )
    limit = config.intake.max_message_size
    raw = read_message(stdin, limit)
    if not raw.strip():
        print("ticketgate pipe: empty message", file=sys.stderr)
        return EX_DATAERR
    if len(raw) > limit:
        size = len(raw) + drain(stdin)
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
    """Too large: record the refusal and exit 0 (DESIGN.md), or 75 if we cannot record it."""
    from .runtime import build_intake, open_store

    try:
        store = open_store(config)
        build_intake(config, store).record_size_rejected(size, envelope)
    except Exception:
        log.exception("could not record size rejection")
        return EX_TEMPFAIL
    print(f"ticketgate pipe: message of {size} bytes exceeds the limit; discarded",
          file=sys.stderr)
    return EX_OK


def _setup_failed(exc: Exception, transient: bool) -> int:
    """The store, rules or templates could not be set up: 75, and no quarantine copy.

    Nothing here is specific to this message (every delivery would fail the same way), so
    the MTA's queue is the right place to wait until the admin fixes it.
    """
    from rules.errors import RulesError

    if isinstance(exc, RulesError):
        log.error("invalid rules, not accepting mail: %s", exc)
        print("ticketgate pipe: temporary failure: invalid rule files "
              "(run `ticketgate rules check`)", file=sys.stderr)
    elif transient:
        log.warning("transient failure: %s", type(exc).__name__)
        print("ticketgate pipe: temporary failure (database busy or unavailable)",
              file=sys.stderr)
    else:
        log.error("could not start the intake", exc_info=exc)
        print(f"ticketgate pipe: temporary failure: cannot start ({type(exc).__name__})",
              file=sys.stderr)
    return EX_TEMPFAIL


def process_in_process(config: Config, raw: bytes, envelope: Envelope, started: float) -> int:
    from ticketstore.db import is_transient

    from .runtime import build_intake, open_store
    from .spool import quarantine

    try:
        store = open_store(config)
        intake = build_intake(config, store)
    except Exception as exc:
        return _setup_failed(exc, is_transient(exc))
    try:
        if (envelope.rcpt_tos and config.intake.strict_recipients
                and not any(intake.recipient_known(r) for r in envelope.rcpt_tos)):
            print("ticketgate pipe: unknown recipient", file=sys.stderr)
            return EX_NOUSER
        disposition = intake.process(raw, envelope)
    except Exception as exc:
        if is_transient(exc):
            log.warning("transient failure: %s", type(exc).__name__)
            print("ticketgate pipe: temporary failure (database busy or unavailable)",
                  file=sys.stderr)
            return EX_TEMPFAIL
        try:
            path = quarantine(config.path(config.intake.spool_dir), raw, envelope, exc)
            log.error("unexpected error, message quarantined in %s", path, exc_info=exc)
        except Exception:
            log.exception("unexpected error and the quarantine spool failed too")
        print("ticketgate pipe: temporary failure, message kept for retry", file=sys.stderr)
        return EX_TEMPFAIL
    log.info(
        "message_id=<%s> disposition=%s ticket=%s queue=%s duration=%.3fs",
        disposition.message_id, disposition.outcome.value, disposition.ticket_number,
        disposition.queue, time.monotonic() - started,
    )
    return EX_OK
