"""A message parsed, classified and routed: what `Intake.prepare` hands to `Intake.store`."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.mail.classify import Classification
from gateway.mail.envelope import Envelope
from gateway.mail.parse import ParsedMessage
from gateway.mail.verdict import NO_VERDICT, SenderVerdict

from .ports import Route


@dataclass(frozen=True)
class Prepared:
    raw: bytes
    envelope: Envelope
    msg: ParsedMessage
    classification: Classification
    route: Route
    message_id: str
    content_hash: str
    queue: str  # from the recipients; a rule's queue wins for new tickets
    verdict: SenderVerdict = NO_VERDICT

    @property
    def new_ticket_queue(self) -> str:
        """The queue a new ticket for this message goes to."""
        return self.route.queue or self.queue
