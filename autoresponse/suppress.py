"""When not to answer: the one table of suppression checks, each with its reason.

An auto-responder that answers a robot, a list or another auto-responder floods people.
Each check looks at the stored message (and, for the limits, the database: limits.py) and
returns a reason or None; the first reason wins and is recorded in an
`autoresponse-suppressed` event. The order below is the order they are evaluated in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.intake.recipients import split_plus
from gateway.mail import classify as c

from . import limits
from .compose import valid_address

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.config import Config
    from gateway.intake.ports import StoredMessage

@dataclass(frozen=True)
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


def is_system_address(addr: str, system_addresses: frozenset[str]) -> bool:
    """One of our queue addresses, also with a +tag."""
    return addr.lower() in system_addresses or split_plus(addr)[0] in system_addresses


def _system_address(ctx: Check) -> str | None:
    for addr in _senders(ctx):
        if addr and is_system_address(addr, ctx.system_addresses):
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


def _daily_limit(ctx: Check) -> str | None:
    """A look at today's count; the exact step is limits.reserve, when the answer is made."""
    limit = ctx.config.autoresponse.max_per_day
    mailbox = limits.mailbox_key(ctx.recipient, ctx.config.autoresponse.recipient_delimiter)
    sent = limits.answers_today(ctx.conn, mailbox, ctx.stored.now)
    if sent >= limit:
        return daily_reason(sent, mailbox, limit)
    return None


def daily_reason(sent: int, mailbox: str, limit: int) -> str:
    return f"{sent} auto-responses to {mailbox} today (UTC; max_per_day = {limit})"


def _domain_limit(ctx: Check) -> str | None:
    limit = ctx.config.autoresponse.max_per_domain_per_hour
    if not limit:
        return None
    domain = limits.domain_key(ctx.recipient.rpartition("@")[2])
    sent = limits.answers_last_hour(ctx.conn, ctx.stored.now, limit, domain)
    if sent >= limit:
        return f"{sent} auto-responses to {domain} in the last hour " \
               f"(max_per_domain_per_hour = {limit})"
    return None


def _global_limit(ctx: Check) -> str | None:
    limit = ctx.config.autoresponse.max_per_hour
    if not limit:
        return None
    sent = limits.answers_last_hour(ctx.conn, ctx.stored.now, limit)
    if sent >= limit:
        return f"{sent} auto-responses from this site in the last hour (max_per_hour = {limit})"
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
    ("domain-limit", _domain_limit),
    ("global-limit", _global_limit),
)
# The checks that need the database (a dry run without one skips them).
DATABASE_CHECKS = frozenset({"daily-limit", "domain-limit", "global-limit"})


def suppression(ctx: Check, skip: frozenset[str] = frozenset()) -> tuple[str, str] | None:
    """(check name, reason) of the first check that says no, or None: answer. `skip`
    names checks not to run (the dry run without a database skips DATABASE_CHECKS)."""
    for name, check in CHECKS:
        reason = None if name in skip else check(ctx)
        if reason:
            return name, reason
    return None
