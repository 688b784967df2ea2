"""Read-only copies of a ticket and an article, as the intake hands them to the responder.

Plain values, not ORM objects: they outlive the transaction that read or wrote them, and
nothing can lazy-load or flush through them. The attribute names are the column keys of
`ticketstore.models`, so code reads a snapshot as it would read the model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select

from .models import Queue, Ticket

TICKETS = Ticket.__table__
QUEUES = Queue.__table__


@dataclass(frozen=True)
class QueueSnapshot:
    id: int
    name: str


@dataclass(frozen=True)
class TicketSnapshot:
    id: int
    number: str
    title: str
    queue_id: int
    state: str
    priority: int
    customer_address: str
    customer_name: str
    customer_domain: str
    customer_id: str
    tags: list[str]
    thread_key: str | None
    linked_ticket_id: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    closed_at: dt.datetime | None
    queue: QueueSnapshot


@dataclass(frozen=True)
class ArticleSnapshot:
    id: int
    ticket_id: int
    direction: str
    kind: str
    message_id: str
    content_hash: str
    in_reply_to: str
    references: str
    from_address: str
    from_name: str
    to: str
    cc: str
    subject: str
    body_text: str
    body_html: str
    raw: bytes
    size: int
    envelope_sender: str
    envelope_recipients: list[str]
    classification: list[str]
    created_at: dt.datetime
    dkim: str = "none"
    aligned: bool = False
    dmarc: str = "none"
    aligned_failed: bool = False
    verdict_source: str = "off"
    # Written by someone who is not a participant of the ticket (docs/identity.md).
    from_stranger: bool = False


# Every ticket column plus `queue_name`: the row `ticket_snapshot` reads.
SELECT_TICKETS: Select[Any] = select(*TICKETS.columns, QUEUES.c.name.label("queue_name")).join(
    QUEUES, TICKETS.c.queue_id == QUEUES.c.id)


def ticket_snapshot(row: Mapping[str, Any], queue_name: str | None = None) -> TicketSnapshot:
    """A snapshot of a ticket row (a `SELECT_TICKETS` row, or the values just inserted
    with `queue_name` given)."""
    values = {c.key: row[c.key] for c in TICKETS.columns}
    name = row["queue_name"] if queue_name is None else queue_name
    return TicketSnapshot(**values, queue=QueueSnapshot(row["queue_id"], name))
