"""The interface between the intake core and the auto-responder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import datetime as dt

    from sqlalchemy import Connection

    from gateway.classify import Classification
    from gateway.envelope import Envelope, Outcome
    from gateway.intake import Prepared
    from gateway.parse import ParsedMessage
    from rules.route import Route
    from ticketstore.models import Article, Ticket


@dataclass  # no slots: draft.queue_name reads the instance dict, as on a detached Queue
class QueueRef:
    name: str


@dataclass  # no slots: draft.ticket_key reads the instance dict
class TicketPreview:
    """The ticket a message would open, as an answer drafted before the store sees it.

    The `Ticket` attributes an answer reads (number still unknown), in a plain object: a
    detached ORM instance cost several times as much for every drafted answer.
    """

    title: str
    state: str
    priority: int
    customer_name: str | None
    customer_address: str
    customer_domain: str
    customer_id: str
    queue: QueueRef
    number: str = ""


@dataclass(slots=True)  # not frozen: made for every stored message and every draft, and
class StoredMessage:    # a frozen __init__ costs a call per field (nobody changes it)
    """Everything the responder may need about a message that was just stored."""

    msg: ParsedMessage
    envelope: Envelope
    classification: Classification
    route: Route
    ticket: Ticket
    article: Article
    outcome: Outcome
    # "reopen" / "reject" / "new-ticket" when this was a follow-up to a closed ticket.
    closed_policy: str | None
    # True when the ticket went to a queue that accepts no new tickets.
    queue_refused_new: bool
    now: dt.datetime
    # What `Responder.draft` made for this message before the store, if anything.
    draft: object | None = None


class Responder(Protocol):
    # False: the intake never calls `draft` (and builds no preview ticket for it).
    drafts: bool

    def draft(self, p: Prepared, preview: TicketPreview) -> object | None:
        """Work for the answer that can be done before the store, outside the writer's
        lock, assuming `p` creates `preview` (whose number is not known yet)."""

    def after_store(self, conn: Connection, stored: StoredMessage) -> None: ...

    # Called once at server start (gateway/server/app.py), never by `ticketgate pipe`.
    def warm_up(self, conn: Connection) -> None: ...


class NullResponder:
    """Auto-responses off: nothing is planned."""

    drafts = False

    def draft(self, p: Prepared, preview: TicketPreview) -> object | None:
        return None

    def after_store(self, conn: Connection, stored: StoredMessage) -> None:
        return None

    def warm_up(self, conn: Connection) -> None:
        """Nothing to prepare (see `AutoResponder.warm_up`)."""
        return None
