"""What a message does to the ticket it follows up: the closed-ticket policy, and what a
follow-up changes. The intake and `ticketgate rules test` both decide with `decide`, so
the dry run's explanation is what the intake does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.config import Config
from gateway.mail.classify import BOUNCE, OUT_OF_OFFICE, Classification
from ticketstore.snapshots import TicketSnapshot

from .outcome import Outcome
from .ports import Route
from .prepared import Prepared

# (id of another ticket, or None for the message's own; event kind; detail)
EventSpec = tuple[int | None, str, dict[str, object]]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome  # CREATED, FOLLOW_UP or REJECTED
    # The existing ticket the message is stored on; None: a new ticket.
    ticket: TicketSnapshot | None
    queue: str  # the queue of the ticket the message is stored on
    # The closed ticket's `follow_up_closed` when it applied; None otherwise.
    closed_policy: str | None = None
    reopen: bool = False
    # The closed ticket a new ticket continues (follow_up_closed = "new-ticket").
    linked_to: TicketSnapshot | None = None
    # A new ticket in a queue with accept_new = false: stored closed, then answered.
    refused_new: bool = False


def reopens(classification: Classification) -> bool:
    """Vacation notices and bounces thread, but do not reopen a closed ticket."""
    return not ({OUT_OF_OFFICE, BOUNCE} & classification.labels)


def decide(config: Config, p: Prepared, found: TicketSnapshot | None) -> Decision:
    """Where `p` goes, given the ticket follow-up detection `found` for it."""
    if found is None:
        queue = p.new_ticket_queue
        return Decision(Outcome.CREATED, None, queue,
                        refused_new=not config.queue(queue).accept_new)
    queue = found.queue.name
    if found.state != "closed" or not reopens(p.classification):
        return Decision(Outcome.FOLLOW_UP, found, queue)
    policy = config.queue(queue).follow_up_closed
    if policy == "new-ticket":
        return Decision(Outcome.CREATED, None, p.new_ticket_queue, policy, linked_to=found)
    if policy == "reject":
        return Decision(Outcome.REJECTED, found, queue, policy)
    return Decision(Outcome.FOLLOW_UP, found, queue, policy, reopen=True)


def follow_up_changes(ticket: TicketSnapshot, route: Route, now: dt.datetime,
                      events: list[EventSpec]) -> dict[str, object]:
    """On follow-ups rules may add tags and change the state (a pending ticket is opened);
    the queue and priority stay. A state change is added to `events`."""
    changes: dict[str, object] = {}
    if route.tags and not set(route.tags) <= set(ticket.tags or []):
        changes["tags"] = sorted(set(ticket.tags or []) | set(route.tags))
    new_state = route.state
    if new_state is None and ticket.state == "pending":
        new_state = "open"
    if new_state and new_state != ticket.state:
        events.append((None, "state-changed", {
            "from": ticket.state, "to": new_state, "by": ",".join(route.matched) or "follow-up"}))
        changes["state"] = new_state
        changes["closed_at"] = now if new_state == "closed" else None
    return changes
