"""The intake core: raw bytes + envelope in, a Disposition out, one transaction.

Every entry point (pipe, LMTP/SMTP server, spool replay) calls this module and only
translates its result or its exception into replies or exit codes. Work is split into
`prepare` (parse, classify, route: pure CPU, no database) and `store` (thread and write
inside the caller's transaction), so the server prepares outside its writer thread and
commits several messages in one transaction (group commit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import cached_property

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Config
from gateway.mail.classify import classify
from gateway.mail.envelope import Envelope
from gateway.mail.parse import parse_message
from ticketstore.models import utcnow

from .dedupe import content_hash, find_duplicate, ignored_fields
from .followup import find_ticket
from .outcome import Disposition, Outcome
from .policy import EventSpec, decide, follow_up_changes
from .ports import NullResponder, NullRouter, Responder, Router, StoredMessage
from .prepared import Prepared
from .recipients import QueueMap
from .store import event_row, insert_article, insert_events, insert_ticket, queue_id, update_ticket
from .transaction import store_alone

__all__ = ["Intake", "Prepared"]


class Intake:
    """The core, configured once; safe to share between threads (it keeps no state)."""

    def __init__(
        self,
        config: Config,
        factory: sessionmaker[Session],
        router: Router | None = None,
        responder: Responder | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.config = config
        self.factory = factory
        self.router: Router = router or NullRouter()
        self.responder: Responder = responder or NullResponder()
        self.clock = clock
        self.queues = QueueMap.from_config(config)
        self.hash_ignores = ignored_fields(config.intake.dedupe_ignore_headers)

    @cached_property
    def engine(self) -> Engine:
        """The engine the sessions are bound to (asked once: a Session per call is not free)."""
        with self.factory() as session:
            bind = session.get_bind()
        assert isinstance(bind, Engine)
        return bind

    # -- recipients ---------------------------------------------------------------------

    def recipient_known(self, address: str) -> bool:
        return self.queues.lookup(address) is not None

    def recipient_accepted(self, address: str) -> bool:
        """Unknown recipients are accepted unless `[intake] strict_recipients` is set."""
        return not self.config.intake.strict_recipients or self.recipient_known(address)

    # -- the two halves -----------------------------------------------------------------

    def prepare(self, raw: bytes, envelope: Envelope) -> Prepared:
        msg = parse_message(raw)
        classification = classify(msg, envelope, self.config.autoresponse.loop_header)
        route = self.router.route(msg, envelope, classification)
        chash = content_hash(raw, self.hash_ignores)
        message_id = msg.message_id or f"{chash[:40]}@ticketgate.invalid"
        recipients = envelope.rcpt_tos or (
            msg.headers.get("delivered-to", ()) + msg.headers.get("x-original-to", ())
            + msg.to + msg.cc
        )
        queue = self.queues.queue_for(recipients) or self.config.tickets.default_queue
        return Prepared(raw, envelope, msg, classification, route, message_id, chash, queue)

    def store(self, conn: Connection, p: Prepared) -> Disposition:
        """Thread and write one prepared message on `conn`, inside its transaction."""
        now = self.clock()
        duplicate = find_duplicate(conn, p.message_id, p.content_hash)
        if duplicate is not None:
            return duplicate
        if p.route.ignore:
            insert_events(conn, [event_row(None, None, "ignored", now, {
                "rules": list(p.route.matched), "message_id": p.message_id,
                "from": p.msg.from_address, "subject": p.msg.subject[:200],
            })])
            return Disposition(Outcome.IGNORED, p.message_id, notes=p.route.matched)

        d = decide(self.config, p, find_ticket(conn, self.config.tickets, p))
        events: list[EventSpec] = []
        if d.ticket is None:
            ticket = insert_ticket(conn, self.config.tickets, p, d.queue, now, d.refused_new,
                                   d.linked_to.id if d.linked_to else None)
            if d.linked_to is not None:
                events.append((d.linked_to.id, "linked", {"new_ticket": ticket.number}))
                events.append((None, "linked", {"previous_ticket": d.linked_to.number}))
            if d.refused_new:
                events.append((None, "rejected", {"reason": "queue accepts no new tickets"}))
        else:
            changes: dict[str, object] = {}
            if d.outcome is Outcome.REJECTED:
                events.append((None, "rejected", {"reason": "follow-up to a closed ticket",
                                                  "message_id": p.message_id}))
            if d.reopen:
                changes.update(state="open", closed_at=None)
                events.append((None, "reopened", {"message_id": p.message_id}))
            if d.outcome is Outcome.FOLLOW_UP:
                changes.update(follow_up_changes(d.ticket, p.route, now, events))
            ticket = update_ticket(conn, d.ticket, {**changes, "updated_at": now})

        article = insert_article(conn, p, ticket.id, now)
        kind = "created" if d.outcome is Outcome.CREATED else "follow-up"
        events.append((None, kind, {
            "message_id": p.message_id, "queue": ticket.queue.name, "from": p.msg.from_address,
            "recipients": list(p.envelope.rcpt_tos),
            "classification": sorted(p.classification.labels),
        }))
        if p.route.matched:
            events.append((None, "routed", {"rules": list(p.route.matched)}))
        insert_events(conn, [
            event_row(other or ticket.id, None if other else article.id, kind_, now, detail)
            for other, kind_, detail in events
        ])
        self.responder.after_store(conn, StoredMessage(
            msg=p.msg, envelope=p.envelope, classification=p.classification, route=p.route,
            ticket=ticket, article=article, outcome=d.outcome, closed_policy=d.closed_policy,
            queue_refused_new=d.refused_new, now=now,
        ))
        return Disposition(d.outcome, p.message_id, ticket.number, ticket.queue.name,
                           article.id, notes=p.route.matched)

    def ticket_of(self, conn: Connection, p: Prepared) -> int | None:
        """The id of the ticket `p` would follow up, for locking tickets in order
        (transaction.lock_tickets); nothing is written."""
        ticket = find_ticket(conn, self.config.tickets, p)
        return ticket.id if ticket is not None else None

    def process(self, raw: bytes, envelope: Envelope) -> Disposition:
        """Prepare and store one message in its own transaction (the pipe's path)."""
        return store_alone(self.engine, self, self.prepare(raw, envelope))

    def record_size_rejected(self, size: int, envelope: Envelope) -> None:
        """Keep a trace of a message we refused for its size (it is not stored)."""
        with self.engine.begin() as conn:
            insert_events(conn, [event_row(None, None, "size-rejected", self.clock(), {
                "size": size, "limit": self.config.intake.max_message_size,
                "mail_from": envelope.mail_from or "", "rcpt_to": list(envelope.rcpt_tos),
            })])

    def sync_queues(self) -> None:
        """Create the configured queues so they show up before their first ticket."""
        with self.engine.begin() as conn:
            for name in self.config.queue_names:
                queue_id(conn, name, self.clock())
