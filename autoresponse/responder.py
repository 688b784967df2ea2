"""Plain stand-ins for a ticket not stored yet (used by draft.py until it goes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QueueRef:
    name: str


@dataclass
class TicketPreview:
    title: str
    state: str
    priority: int
    customer_name: str | None
    customer_address: str
    customer_domain: str
    customer_id: str
    queue: QueueRef
    number: str = ""
