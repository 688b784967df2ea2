"""Hand a piped message to a running `serve` daemon over LMTP on its Unix socket.

`ticketgate pipe` runs once per message; importing the store, parser and rules costs
more than the delivery itself. When the daemon is reachable the pipe only speaks LMTP
(smtplib and socket, nothing heavier) and turns the daemon's reply into its exit code:

`gateway.failures.exit_code_for_reply` maps each reply: 250 and 552 5.3.4 (too big,
the refusal recorded by the daemon) exit 0, 550 5.1.1 for every recipient 67, anything
else (4xx, another 5xx, a broken session) 75.

Not reachable (no socket, nobody listening, 421 greeting): return None so the pipe
processes in-process, or 75 with `[pipe] require_daemon`.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import sys

from gateway.mail.envelope import Envelope

from .config import Config
from .failures import TRANSIENT, category_of_reply, combine_exit_codes, exit_code_for_reply

log = logging.getLogger("ticketgate.handoff")

_LINE_END = re.compile(rb"\r?\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def lmtp_payload(raw: bytes) -> bytes:
    """CRLF line ends, dot-stuffed, ending with the lone dot."""
    data = _LINE_END.sub(b"\r\n", raw)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


def try_handoff(config: Config, raw: bytes, envelope: Envelope) -> int | None:
    """The pipe's exit code if a daemon took the message, None to process in-process."""
    required = config.pipe.require_daemon
    fallback = TRANSIENT.exit_code if required else None
    if not config.pipe.handoff_socket:
        return fallback
    if not envelope.rcpt_tos:
        # LMTP needs a recipient; without -r the intake reads them from the headers.
        if required:
            log.warning("require_daemon is set but no recipient (-r) was given")
        return fallback
    path = os.path.abspath(config.path(config.pipe.handoff_socket))
    try:
        client = smtplib.LMTP(path, local_hostname="localhost",
                              timeout=config.pipe.handoff_timeout)
    except (OSError, smtplib.SMTPException) as exc:
        log.debug("daemon not reachable on %s: %s", path, exc)
        if required:
            print(TRANSIENT.line(cause=f"the daemon is not reachable on {path} "
                                       f"({_words(exc)}) and [pipe] require_daemon is set"),
                  file=sys.stderr)
        return fallback
    tempfails: list[str] = []
    try:
        code = _deliver(client, raw, envelope, tempfails)
        if code == TRANSIENT.exit_code and tempfails:
            # The daemon's cause, in the one line pipe(8) copies into Postfix's log.
            print(TRANSIENT.line(cause=f"{tempfails[0]} (the daemon's reply)"), file=sys.stderr)
        return code
    except (OSError, smtplib.SMTPException) as exc:
        # Reachable but the session broke: the daemon may or may not have stored it;
        # a retry is safe (intake is idempotent).
        print(TRANSIENT.line(cause=f"the hand-off to the daemon on {path} broke off "
                                   f"({_words(exc)})"), file=sys.stderr)
        return TRANSIENT.exit_code
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def _words(exc: BaseException) -> str:
    """What went wrong, in the system's words rather than an exception class name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or "the connection closed"


def _deliver(client: smtplib.LMTP, raw: bytes, envelope: Envelope,
             tempfails: list[str]) -> int:
    """LMTP the message; the cause of each 4xx reply is added to `tempfails`."""

    def exit_code(code: int, reply: bytes) -> int:
        text = reply.decode("utf-8", "replace")
        if 400 <= code < 500:
            tempfails.append(category_of_reply(code, text) or " ".join(f"{code} {text}".split()))
        return exit_code_for_reply(code, text)

    code, text = client.ehlo("localhost")
    if code != 250:
        return TRANSIENT.exit_code
    sender = envelope.mail_from or ""
    options: list[str] = []
    addresses = [sender, *envelope.rcpt_tos]
    if not all(a.isascii() for a in addresses):
        if not client.has_extn("smtputf8"):
            return TRANSIENT.exit_code
        options.append("SMTPUTF8")
    code, text = client.mail(sender, options)
    if code != 250:
        return exit_code(code, text)
    accepted = 0
    refusals: list[int] = []
    for rcpt in envelope.rcpt_tos:
        code, text = client.rcpt(rcpt)
        if code == 250:
            accepted += 1
        else:
            refusals.append(exit_code(code, text))
    if not accepted:
        return combine_exit_codes(refusals)
    client.putcmd("data")
    code, text = client.getreply()
    if code != 354:
        return exit_code(code, text)
    client.send(lmtp_payload(raw))
    # RFC 2033: one reply per accepted recipient.
    results = []
    for _ in range(accepted):
        code, text = client.getreply()
        results.append(exit_code(code, text))
    return combine_exit_codes(results)
