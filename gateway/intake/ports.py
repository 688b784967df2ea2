"""The core's ports: what the intake asks of a router and tells a responder.

Plug-ins (rules/, autoresponse/) implement these; the core never imports them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.mail.classify import Classification
from gateway.mail.envelope import Envelope
from gateway.mail.parse import ParsedMessage
from gateway.mail.verdict import NO_VERDICT, SenderVerdict

from .outcome import Outcome

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from ticketstore.snapshots import ArticleSnapshot, TicketSnapshot


@dataclass(frozen=True)
class Route:
    """Fields left None were not set by any rule: the intake's defaults apply."""

    queue: str | None = None
    priority: int | None = None
    state: str | None = None
    tags: tuple[str, ...] = ()
    customer: str | None = None
    ignore: bool = False
    no_auto_response: bool = False
    thread_key: str | None = None
    # Names of the rules that matched, in evaluation order (recorded on the ticket).
    matched: tuple[str, ...] = ()


class Router(Protocol):
    # `verdict`: where the message really comes from (rules' dkim/aligned/dmarc conditions).
    def route(
        self, msg: ParsedMessage, envelope: Envelope, classification: Classification,
        verdict: SenderVerdict = NO_VERDICT,
    ) -> Route: ...


class NullRouter:
    """No rules loaded: every message gets the empty route."""

    def route(
        self, msg: ParsedMessage, envelope: Envelope, classification: Classification,
        verdict: SenderVerdict = NO_VERDICT,
    ) -> Route:
        return Route()


@dataclass(frozen=True)
class StoredMessage:
    """Everything the responder may need about a message that was just stored."""

    msg: ParsedMessage
    envelope: Envelope
    classification: Classification
    route: Route
    ticket: TicketSnapshot
    article: ArticleSnapshot
    outcome: Outcome
    # "reopen" / "reject" / "new-ticket" when this was a follow-up to a closed ticket.
    closed_policy: str | None
    # True when the ticket went to a queue that accepts no new tickets.
    queue_refused_new: bool
    now: dt.datetime
    # False when the sender is not a participant of the ticket (a stranger's follow-up by
    # number that the queue's policy accepted): an answer to them reveals nothing of it.
    sender_is_participant: bool = True


class Responder(Protocol):
    def after_store(self, conn: Connection, stored: StoredMessage) -> None: ...

    # Called once at server start, never by `ticketgate pipe`.
    def warm_up(self, conn: Connection) -> None: ...


class NullResponder:
    """Auto-responses off: nothing is planned."""

    def after_store(self, conn: Connection, stored: StoredMessage) -> None:
        return None

    def warm_up(self, conn: Connection) -> None:
        return None
