"""Hand a piped message to a running `serve` daemon over LMTP on its Unix socket.

`ticketgate pipe` runs once per message; importing the store, parser and rules costs
more than the delivery itself. When the daemon is reachable the pipe only speaks LMTP
(smtplib and socket, nothing heavier) and turns the daemon's reply into its exit code:

`gateway.failures.exit_code_for_reply` maps each reply: 250 exits 0, 550 5.1.1 for every
recipient 67, anything else (4xx, another 5xx, a broken session) 75.

Not reachable (no socket, nobody listening, 421 greeting): return None so the pipe
processes in-process, or 75 with `[pipe] require_daemon`. In-process too (whatever
`require_daemon` says where noted) when the daemon cannot take the message as the pipe
has it, since each of these would fail the same way on every retry:
- a 552 (too big): the pipe has checked the size itself, so the daemon's limit differs
  (it was not reloaded); the refusal is not the pipe's to turn into an exit code;
- more than `MAX_RECIPIENTS` recipients (the daemon answers 452 beyond them): one
  in-process transaction records them all. With `require_daemon` they go in batches,
  one transaction each; the daemon stores the message once, with the first batch's
  recipients, and acknowledges the later batches as duplicates;
- an envelope address that is not valid UTF-8, which the daemon refuses at MAIL (even
  with `require_daemon`: the message is stored, not deferred forever).
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


# The daemon's recipients per transaction (gateway/server/handler.py answers 452 beyond).
MAX_RECIPIENTS = 1000


def lmtp_payload(raw: bytes) -> bytes:
    """CRLF line ends, dot-stuffed, ending with the lone dot."""
    data = _LINE_END.sub(b"\r\n", raw)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


def _utf8(address: str) -> bool:
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:  # undecodable argv bytes, kept by Python as surrogates
        return False
    return True


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
    if not all(_utf8(a) for a in (envelope.mail_from or "", *envelope.rcpt_tos)):
        log.info("an envelope address is not valid UTF-8: the daemon would refuse it, "
                 "storing the message in-process")
        return None
    if len(envelope.rcpt_tos) > MAX_RECIPIENTS and not required:
        return None
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
        code = _deliver(client, raw, envelope, required, tempfails)
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


def report_size(config: Config, size: int, envelope: Envelope) -> bool:
    """Have the daemon record a message the pipe refused for its size (`require_daemon`):
    `MAIL FROM` declaring `SIZE=size`, which it answers 552 and records. True if it did."""
    addresses = (envelope.mail_from or "", *envelope.rcpt_tos)
    if not config.pipe.handoff_socket or not all(_utf8(a) for a in addresses):
        return False
    path = os.path.abspath(config.path(config.pipe.handoff_socket))
    try:
        with smtplib.LMTP(path, local_hostname="localhost",
                          timeout=config.pipe.handoff_timeout) as client:
            client.ehlo("localhost")
            options = [f"SIZE={size}"]
            if not all(a.isascii() for a in addresses):
                options.append("SMTPUTF8")
            code, _text = client.mail(envelope.mail_from or "", options)
            client.rset()
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not have the daemon record a size refusal: %s", _words(exc))
        return False
    if code != 552:
        log.warning("the daemon did not refuse the size (%d): its limit differs", code)
    return code == 552


class _NotForTheDaemon(Exception):
    """The daemon cannot take this message as the pipe has it (see the module's notes)."""


def _deliver(client: smtplib.LMTP, raw: bytes, envelope: Envelope, required: bool,
             tempfails: list[str]) -> int | None:
    """LMTP the message; the cause of each 4xx reply is added to `tempfails`."""
    code, _text = client.ehlo("localhost")
    if code != 250:
        return TRANSIENT.exit_code
    options: list[str] = []
    if not all(a.isascii() for a in (envelope.mail_from or "", *envelope.rcpt_tos)):
        if not client.has_extn("smtputf8"):
            return TRANSIENT.exit_code
        options.append("SMTPUTF8")
    payload = lmtp_payload(raw)
    results: list[int] = []
    pending = list(envelope.rcpt_tos)
    try:
        while pending:
            codes, pending = _transaction(client, envelope.mail_from or "", options, pending,
                                          payload, batches=required, tempfails=tempfails)
            results += codes
    except _NotForTheDaemon as exc:
        if required:
            log.warning("the daemon refused the message: %s", exc)
            return TRANSIENT.exit_code
        log.info("the daemon refused the message (%s): storing it in-process", exc)
        return None
    return combine_exit_codes(results)


def _transaction(client: smtplib.LMTP, sender: str, options: list[str], recipients: list[str],
                 payload: bytes, batches: bool, tempfails: list[str],
                 ) -> tuple[list[int], list[str]]:
    """One LMTP transaction for as many of `recipients` as the daemon takes: the exit
    codes of its replies, and the recipients left for the next transaction (452)."""

    def exit_code(code: int, reply: bytes) -> int:
        text = reply.decode("utf-8", "replace")
        if 400 <= code < 500:
            tempfails.append(category_of_reply(code, text) or " ".join(f"{code} {text}".split()))
        return exit_code_for_reply(code, text)

    code, text = client.mail(sender, options)
    if code == 552:
        raise _NotForTheDaemon("552 at MAIL: its size limit differs from the pipe's")
    if code != 250:
        return [exit_code(code, text)], []
    accepted = 0
    codes: list[int] = []
    rest: list[str] = []
    for i, rcpt in enumerate(recipients):
        code, text = client.rcpt(rcpt)
        if code == 452 and accepted:  # too many recipients for one transaction
            if not batches:
                client.rset()
                raise _NotForTheDaemon(f"452 after {accepted} recipients")
            rest = recipients[i:]
            break
        if code == 250:
            accepted += 1
        else:
            codes.append(exit_code(code, text))
    if not accepted:
        client.rset()
        return codes, rest
    client.putcmd("data")
    code, text = client.getreply()
    if code != 354:
        return [*codes, exit_code(code, text)], []
    client.send(payload)
    # RFC 2033: one reply per accepted recipient.
    replies = [client.getreply() for _ in range(accepted)]
    if any(code == 552 for code, _text in replies):
        raise _NotForTheDaemon("552 after DATA: its size limit differs from the pipe's")
    codes += [exit_code(code, text)
              for code, text in replies]
    return codes, rest
