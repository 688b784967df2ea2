"""What the intake core hands back to every entry point."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    CREATED = "created"
    FOLLOW_UP = "follow-up"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    REJECTED = "rejected"  # stored on a closed ticket of a "reject" queue
    HELD = "held"  # a stranger's follow-up kept out of the ticket (stranger_follow_up = hold)


@dataclass(frozen=True)
class Disposition:
    """The result of one message: entry points turn this into 250 / exit 0."""

    outcome: Outcome
    message_id: str
    ticket_number: str | None = None
    queue: str | None = None
    article_id: int | None = None
    # Names of the rules that matched, and other notes for the log line.
    notes: tuple[str, ...] = field(default_factory=tuple)
