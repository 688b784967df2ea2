"""What a message does to the ticket it follows up: the stranger and closed-ticket
policies, and what a follow-up changes. The intake and `ticketgate rules test` both
decide with `decide`, so the dry run's explanation is what the intake does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.config import Config
from gateway.mail.classify import BOUNCE, OUT_OF_OFFICE, Classification
from ticketstore.snapshots import TicketSnapshot

from .followup import FollowUp
from .outcome import Outcome
from .ports import Route
from .prepared import Prepared

# (id of another ticket, or None for the message's own; event kind; detail)
EventSpec = tuple[int | None, str, dict[str, object]]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome  # CREATED, FOLLOW_UP, REJECTED or HELD
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
    # How the message was linked to the ticket it names (None: it names none).
    found: FollowUp | None = None
    # The named ticket's `stranger_follow_up` when the sender is a stranger to it.
    stranger_policy: str | None = None

    @property
    def from_stranger(self) -> bool:
        """Stored (or held) on a ticket whose participants the sender is not one of."""
        return self.stranger_policy in ("accept", "hold")


def reopens(classification: Classification) -> bool:
    """Vacation notices and bounces thread, but do not reopen a closed ticket."""
    return not ({OUT_OF_OFFICE, BOUNCE} & classification.labels)


def decide(config: Config, p: Prepared, link: FollowUp | None) -> Decision:
    """Where `p` goes, given what follow-up detection found for it (`link`)."""
    if link is None:
        return _new(config, p)
    found = link.ticket
    queue = found.queue.name
    if link.stranger:
        policy = config.queue(queue).stranger_follow_up
        if policy == "hold":
            return Decision(Outcome.HELD, found, queue, found=link, stranger_policy=policy)
        if policy == "accept":
            # Appended and flagged; a stranger never changes the ticket (no reopen).
            return Decision(Outcome.FOLLOW_UP, found, queue, found=link,
                            stranger_policy=policy)
        return _new(config, p, linked_to=found, found=link, stranger_policy=policy)
    if found.state != "closed" or not reopens(p.classification):
        return Decision(Outcome.FOLLOW_UP, found, queue, found=link)
    policy = config.queue(queue).follow_up_closed
    if policy == "new-ticket":
        return Decision(Outcome.CREATED, None, p.new_ticket_queue, policy, linked_to=found,
                        found=link)
    if policy == "reject":
        return Decision(Outcome.REJECTED, found, queue, policy, found=link)
    return Decision(Outcome.FOLLOW_UP, found, queue, policy, reopen=True, found=link)


def _new(config: Config, p: Prepared, linked_to: TicketSnapshot | None = None,
         found: FollowUp | None = None, stranger_policy: str | None = None) -> Decision:
    queue = p.new_ticket_queue
    return Decision(Outcome.CREATED, None, queue, linked_to=linked_to,
                    refused_new=not config.queue(queue).accept_new, found=found,
                    stranger_policy=stranger_policy)


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
