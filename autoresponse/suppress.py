"""When not to answer: the one table of suppression checks, each with its reason.

An auto-responder that answers a robot, a list or another auto-responder floods people.
Each check looks at the stored message (and, for the daily limit, the outbox table) and
returns a reason or None; the first reason wins and is recorded in an
`autoresponse-suppressed` event. The order below is the order they are evaluated in.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, literal_column, select

from gateway.intake.recipients import split_plus
from gateway.mail import classify as c
from ticketstore.models import Memory, OutboxMessage, UTCDateTime, bind_memory
from ticketstore.statements import STATEMENTS

from .compose import valid_address

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.config import Config
    from gateway.intake.ports import StoredMessage

# Outbox kinds that count towards the per-address daily limit (agent mail does not).
CUSTOMER_KINDS = ("auto-reply", "follow-up", "reject", "new-ticket-rejected")


@dataclass  # not frozen: made twice per answer, and a frozen __init__ costs more
class Check:
    conn: Connection
    stored: StoredMessage
    config: Config
    recipient: str  # where the answer would go ("" when there is no usable address)
    system_addresses: frozenset[str]
    noreply: re.Pattern[str]


def _label(label: str) -> Callable[[Check], str | None]:
    def check(ctx: Check) -> str | None:
        if label not in ctx.stored.classification.labels:
            return None
        for reason in ctx.stored.classification.reasons:
            if reason.startswith(f"{label}: "):
                return reason
        return label

    check.__name__ = f"label_{label}"
    check.label = label  # type: ignore[attr-defined]  # for _screen
    return check


def _envelope_null(ctx: Check) -> str | None:
    return "empty envelope sender <>" if ctx.stored.envelope.mail_from == "" else None


def _senders(ctx: Check) -> dict[str, None]:
    """From, envelope sender and recipient, each once (they are usually one address),
    in that order: the first that matches names the reason."""
    return dict.fromkeys((ctx.stored.msg.from_address, ctx.stored.envelope.mail_from or "",
                          ctx.recipient))


def _noreply_sender(ctx: Check) -> str | None:
    for addr in _senders(ctx):
        local = addr.rpartition("@")[0] or addr
        if local and ctx.noreply.match(local):
            return f"robot sender {addr!r} (autoresponse.noreply_pattern)"
    return None


def _system_address(ctx: Check) -> str | None:
    for addr in _senders(ctx):
        if addr and (addr.lower() in ctx.system_addresses
                     or split_plus(addr)[0] in ctx.system_addresses):
            return f"sender {addr} is one of our own addresses"
    return None


def _queue_off(ctx: Check) -> str | None:
    queue = ctx.stored.ticket.queue.name
    if not ctx.config.queue(queue).auto_response:
        return f"queue {queue} has auto_response = false"
    return None


def _rule(ctx: Check) -> str | None:
    if ctx.stored.route.no_auto_response:
        return f"rule no_auto_response ({', '.join(ctx.stored.route.matched) or 'a rule'})"
    return None


def _no_recipient(ctx: Check) -> str | None:
    return None if valid_address(ctx.recipient) else "no valid address to answer to"


class _WindowStart(UTCDateTime):
    """The daily limit's window start: one object per second (`_window_start`), remembered
    by its processor apart from the `now`s every write binds, so that converting it for
    the database (about a sixth of the answer's work in the transaction) is done once."""

    cache_ok = True

    def _memory(self, dialect: Any) -> Memory:
        return bind_memory()


# Prebuilt: this runs for every answered message, inside the intake's transaction. The
# kinds are written into the SQL (they are our constants), so no bound constants have to
# be merged into every call's parameters.
SENT_SINCE = STATEMENTS.define("autoresponse/sent_since", lambda _d: select(
    func.count(OutboxMessage.id)).where(
    OutboxMessage.rcpt_to == bindparam("rcpt"),
    OutboxMessage.created_at >= bindparam("since", type_=_WindowStart()),
    OutboxMessage.kind.in_([literal_column(f"'{k}'") for k in CUSTOMER_KINDS]),
))
_DAY = dt.timedelta(hours=24)
_window: tuple[tuple[object, ...], dt.datetime | None] = ((), None)


def _window_start(now: dt.datetime) -> dt.datetime:
    """Where the daily limit's 24 hours begin: `now` - 24 h, down to the whole second
    (a window at most a second longer, never shorter), and the same object for every
    answer within one second, so that `_WindowStart` converts it once.

    The second is recognised by its fields (as compose.format_date does): making the
    whole-second datetime to compare with costs three times as much.
    """
    global _window
    key = (now.second, now.minute, now.hour, now.day, now.month, now.year, now.tzinfo)
    last = _window  # one read: another thread may replace it meanwhile
    if last[0] == key:
        return last[1]  # type: ignore[return-value]
    start = now.replace(microsecond=0) - _DAY
    _window = (key, start)
    return start


def _daily_limit(ctx: Check) -> str | None:
    limit = ctx.config.autoresponse.max_per_day
    sent = STATEMENTS(ctx.conn, SENT_SINCE).scalar(
        ctx.conn, {"rcpt": ctx.recipient, "since": _window_start(ctx.stored.now)})
    if sent >= limit:
        return f"{sent} auto-responses to {ctx.recipient} in 24 h (max_per_day = {limit})"
    return None


# name -> check, evaluated in this order; the name is stored with the reason.
CHECKS: tuple[tuple[str, Callable[[Check], str | None]], ...] = (
    ("auto-submitted", _label(c.AUTO_SUBMITTED)),
    ("precedence", _label(c.BULK)),
    ("list", _label(c.LIST)),
    ("loop", _label(c.LOOP)),
    ("suppress-requested", _label(c.SUPPRESS_REQUESTED)),
    ("null-sender", _envelope_null),
    ("bounce", _label(c.BOUNCE)),
    ("out-of-office", _label(c.OUT_OF_OFFICE)),
    ("noreply-sender", _noreply_sender),
    ("system-address", _system_address),
    ("queue-off", _queue_off),
    ("rule", _rule),
    ("no-recipient", _no_recipient),
    ("daily-limit", _daily_limit),
)


def _screen(checks: tuple[tuple[str, Callable[[Check], str | None]], ...]
            ) -> tuple[frozenset[str], tuple[tuple[str, Callable[[Check], str | None]], ...]]:
    """The labels of the leading run of label / null-sender checks, and the checks after it.

    Most mail carries none of those labels and has a sender: then every check of that run
    says None, and `suppression` can start after it without calling each one.
    """
    labels: set[str] = set()
    for i, (_name, check) in enumerate(checks):
        label = getattr(check, "label", None)
        if label is not None:
            labels.add(label)
        elif check is not _envelope_null:
            return frozenset(labels), checks[i:]
    return frozenset(labels), ()


_SCREEN_LABELS, _AFTER_SCREEN = _screen(CHECKS)
# A draft (draft.py) runs the checks that need no database before the store; the store
# then runs the rest. The daily limit is last, so the first reason is the same either way.
MESSAGE_CHECKS = "message"
DATABASE_CHECKS = "database"


def suppression(ctx: Check, which: str = "all") -> tuple[str, str] | None:
    """(check name, reason) of the first check that says no, or None: answer.

    `which`: "all", MESSAGE_CHECKS (all but the last, the daily limit) or
    DATABASE_CHECKS (the last).
    """
    checks = CHECKS
    if ctx.stored.envelope.mail_from != "" and \
            ctx.stored.classification.labels.isdisjoint(_SCREEN_LABELS):
        checks = _AFTER_SCREEN
    if which == MESSAGE_CHECKS:
        checks = checks[:-1]
    elif which == DATABASE_CHECKS:
        checks = checks[-1:]
    for name, check in checks:
        reason = check(ctx)
        if reason:
            return name, reason
    return None
