"""Every reply code and `ticketgate pipe` exit code ticketgate chooses, in one table.

DESIGN.md's failure table as code: the LMTP/SMTP handler answers `failure.reply`, the
pipe exits with `failure.exit_code` after printing `failure.line()`, so the two entry
points cannot treat the same situation differently. aiosmtpd answers plain protocol
errors (bad syntax, commands out of order) itself; everything ticketgate decides is here.

Postfix bounces on an unknown exit code and on any 5xx, so a failure of *our* code is
always a 4xx / 75: the MTA keeps the message and retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .sysexits import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE

if TYPE_CHECKING:
    from .intake.outcome import Disposition

# -- replies --------------------------------------------------------------------------------

S250_SENDER_OK = "250 2.1.0 Sender OK"
S250_RECIPIENT_OK = "250 2.1.5 Recipient OK"
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
S421_TOO_MANY_CONNECTIONS = "421 4.3.2 Too many connections, try again later"
S421_NO_WORKER = "421 4.3.2 Service not available, try again later"
S451_TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
_TEMPFAIL_SUFFIX = ", try again later"
S452_TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
S501_EMPTY_RECIPIENT = "501 5.1.3 Error: empty recipient"
S501_BAD_PARAMETER = "501 5.5.4 Error: malformed MAIL FROM parameter"
S550_NO_SUCH_USER = "550 5.1.1 No such recipient here"
S552_TOO_BIG = "552 5.3.4 Message too big for this system"
S553_SENDER_NOT_UTF8 = "553 5.1.7 Error: sender address is not valid UTF-8"
S553_NEEDS_SMTPUTF8 = "553 5.6.7 Error: non-ASCII address needs SMTPUTF8"

EXIT_DELIVERED = EX_OK  # the pipe's code for the same: stored, ignored or a duplicate


def delivered(disposition: Disposition) -> str:
    """The 250 for a stored, ignored or duplicate message.

    Postfix copies this text into its log (`status=sent (250 ...)`), which is where an
    admin looks first when asked "did my mail arrive?".
    """
    ticket = f" ticket {disposition.ticket_number}" if disposition.ticket_number else ""
    return f"250 2.0.0 Ok: {disposition.outcome.value}{ticket}"


# -- failures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One row of the table: the listener's reply and the pipe's exit code and stderr line."""

    reply: str
    exit_code: int
    message: str  # may name `{size}`; never a bug's exception text: bounces quote it
    quarantine: bool = False  # keep a copy of the raw message in the spool

    @property
    def permanent(self) -> bool:
        """The MTA bounces the message: a 5xx reply, and a pipe exit code but 0 or 75."""
        return self.reply.startswith("5") and self.exit_code not in (EX_OK, EX_TEMPFAIL)

    def line(self, **facts: object) -> str:
        """The pipe's stderr line. A permanent failure's starts with its enhanced status
        code (`5.3.4 ...`): pipe(8) uses a leading RFC 3463 code as the DSN status of the
        bounce, ahead of the one it derives from the exit code."""
        text = "ticketgate pipe: " + self.message.format(**facts)
        return f"{self.reply.split()[1]} {text}" if self.permanent else text


# `{cause}`: gateway.causes' description (in-process) or the daemon's category (hand-off).
TRANSIENT = Failure(S451_TEMPFAIL, EX_TEMPFAIL, "temporary failure: {cause}")
UNEXPECTED = Failure(S451_TEMPFAIL, EX_TEMPFAIL, "temporary failure, message kept for retry",
                     quarantine=True)
# The store, rules or templates could not be set up: every message would fail alike, so
# nothing is quarantined; the MTA's queue waits until the admin fixes it.
INVALID_RULES = Failure(S451_TEMPFAIL, EX_TEMPFAIL,
                        "temporary failure: invalid rule files (run `ticketgate rules check`)")
CANNOT_START = Failure(S451_TEMPFAIL, EX_TEMPFAIL, "temporary failure: cannot start ({error})")
BAD_CONFIG = Failure(S451_TEMPFAIL, EX_TEMPFAIL, "config error: {error}")
CRASHED = Failure(S451_TEMPFAIL, EX_TEMPFAIL, "temporary failure, message not accepted")
UNKNOWN_RECIPIENT = Failure(S550_NO_SUCH_USER, EX_NOUSER, "unknown recipient")
# Refused and recorded as a `size-rejected` event. The pipe exits EX_UNAVAILABLE (whose
# default DSN status in Postfix is 5.3.0, the class of 5.3.4) with `5.3.4` at the start
# of its line: the MTA bounces the message to its sender, who learns it was not taken.
TOO_BIG = Failure(S552_TOO_BIG, EX_UNAVAILABLE,
                  "message of {size} bytes exceeds the limit of {limit} bytes")
# The pipe only: a listener stores an empty DATA like any other malformed message.
EMPTY = Failure("", EX_DATAERR, "empty message")

# The only codes `ticketgate pipe` may exit with.
PIPE_EXIT_CODES = frozenset({EX_OK, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL})


def failure_of(exc: BaseException) -> Failure:
    """A failure while processing one message: transient (database locked or down, disk
    full) or, for anything else, a bug worth a quarantine copy."""
    from ticketstore.db import is_transient  # SQLAlchemy: not for the pipe's hand-off path

    return TRANSIENT if is_transient(exc) else UNEXPECTED


def tempfail_reply(category: str) -> str:
    """`451 4.3.0 database read-only, try again later`: the cause's category, which
    Postfix copies into its log and its delay notices (the description stays in ours)."""
    return f"451 4.3.0 {' '.join(category.split())}{_TEMPFAIL_SUFFIX}"


def category_of_reply(code: int, text: str) -> str | None:
    """The category a daemon's `tempfail_reply` carries ("database read-only"), else None."""
    if not 400 <= code < 500:
        return None
    words = text.strip()
    if words[:1].isdigit():  # the enhanced status code
        words = words.partition(" ")[2]
    if not words.endswith(_TEMPFAIL_SUFFIX):
        return None
    return words.removesuffix(_TEMPFAIL_SUFFIX).strip() or None


def exit_code_for_reply(code: int, text: str = "") -> int:
    """The pipe's exit code for one reply of the daemon it handed a message to.

    550 5.1.1 is our unknown recipient. Any other 5xx from our own daemon is a bug or a
    version mismatch, and mail must not bounce for that; a 552 in particular is not the
    pipe's decision (it checks the size itself before the hand-off), so the hand-off
    does not map it here but stores the message in-process (gateway/handoff.py).
    """
    if 200 <= code < 300:
        return EX_OK
    if code == 550 and text.startswith("5.1.1"):
        return UNKNOWN_RECIPIENT.exit_code
    return EX_TEMPFAIL


def combine_exit_codes(codes: list[int]) -> int:
    """One exit code for several recipients: any tempfail wins, then success."""
    if not codes or EX_TEMPFAIL in codes:
        return EX_TEMPFAIL
    if EX_OK in codes:
        return EX_OK
    return EX_NOUSER
