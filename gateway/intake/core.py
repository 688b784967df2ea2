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

from gateway.config import Config, read_site_secret
from gateway.mail.classify import classify
from gateway.mail.envelope import Envelope
from gateway.mail.parse import parse_message
from ticketstore.models import utcnow

from .columns import message_id_key
from .dedupe import content_hash, find_duplicate, ignored_fields
from .followup import PROOF, THREADED_PATHS, find_follow_up
from .held import find_held, insert_held
from .outcome import Disposition, Outcome
from .participants import ParticipantRules, add_participants
from .policy import Decision, EventSpec, decide, follow_up_changes
from .ports import NullResponder, NullRouter, Responder, Router, StoredMessage
from .prepared import Prepared
from .recipients import QueueMap
from .size_events import SizeRejection, record_size_rejections
from .store import event_row, insert_article, insert_events, insert_ticket, queue_id, update_ticket
from .transaction import Touches, store_alone
from .verify.verifier import Verifier

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
        verifier: Verifier | None = None,
    ) -> None:
        self.config = config
        self.factory = factory
        self.router: Router = router or NullRouter()
        self.responder: Responder = responder or NullResponder()
        self.clock = clock
        self.queues = QueueMap.from_config(config)
        # DKIM's DNS is I/O: passed in (tests give a resolver), else the system's DNS.
        self.verifier = verifier or Verifier.from_config(config)
        self.loop_secret = read_site_secret(config)
        self.participants = ParticipantRules(config, self.queues)
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

    def prepare_may_block(self, raw: bytes) -> bool:
        """True when `prepare` may wait for DNS (a signed message to verify): an event
        loop must run it on an executor."""
        return self.verifier.may_block(raw)

    def prepare(self, raw: bytes, envelope: Envelope) -> Prepared:
        # Undecodable envelope bytes as `\xNN` text, and a Message-ID that fits its column
        # (columns.py): such a message would otherwise fail on every retry.
        envelope = envelope.as_text()
        msg = parse_message(raw)
        classification = classify(msg, envelope, self.config.autoresponse.loop_header,
                                  self.loop_secret)
        verdict = self.verifier.verdict(msg)
        route = self.router.route(msg, envelope, classification, verdict)
        chash = content_hash(raw, self.hash_ignores)
        message_id = message_id_key(msg.message_id or f"{chash[:40]}@ticketgate.invalid")
        recipients = envelope.rcpt_tos or (
            msg.headers.get("delivered-to", ()) + msg.headers.get("x-original-to", ())
            + msg.to + msg.cc
        )
        queue = self.queues.queue_for(recipients) or self.config.tickets.default_queue
        return Prepared(raw, envelope, msg, classification, route, message_id, chash, queue,
                        verdict)

    def store(self, conn: Connection, p: Prepared, touches: Touches) -> Disposition:
        """Thread and write one prepared message on `conn`, inside its transaction.

        A follow-up that changes nothing of its ticket but `updated_at` leaves that to
        `touches`, written just before COMMIT (gateway/intake/transaction.py says why).
        """
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

        d = decide(self.config, p, find_follow_up(conn, self.config.tickets,
                                                  self.participants, p))
        if d.outcome is Outcome.HELD:
            if find_held(conn, p.message_id, p.content_hash) is not None:  # a retry
                return Disposition(Outcome.DUPLICATE, p.message_id, notes=("held before",))
            return self._hold(conn, p, d, now)
        events: list[EventSpec] = []
        if d.ticket is None:
            ticket = insert_ticket(conn, self.config.tickets, p, d.queue, now, d.refused_new,
                                   d.linked_to.id if d.linked_to else None)
            if d.linked_to is not None and d.stranger_policy:
                events.append((d.linked_to.id, "stranger-follow-up",
                               {**self._stranger(p, d), "new_ticket": ticket.number}))
                events.append((None, "linked", {"previous_ticket": d.linked_to.number,
                                                "reason": "a stranger's follow-up by number"}))
            elif d.linked_to is not None:
                events.append((d.linked_to.id, "linked", {"new_ticket": ticket.number}))
                events.append((None, "linked", {"previous_ticket": d.linked_to.number}))
            if d.refused_new:
                events.append((None, "rejected", {"reason": "queue accepts no new tickets"}))
        else:
            changes: dict[str, object] = {}
            if d.from_stranger:  # appended, flagged, and nothing of the ticket changed
                events.append((None, "stranger-follow-up", self._stranger(p, d)))
            if d.outcome is Outcome.REJECTED:
                events.append((None, "rejected", {"reason": "follow-up to a closed ticket",
                                                  "message_id": p.message_id}))
            if d.reopen:
                changes.update(state="open", closed_at=None)
                events.append((None, "reopened", {"message_id": p.message_id}))
            if d.outcome is Outcome.FOLLOW_UP and not d.from_stranger:
                changes.update(follow_up_changes(d.ticket, p.route, now, events))
            if changes:
                ticket = update_ticket(conn, d.ticket, {**changes, "updated_at": now})
            else:
                ticket = touches.touch(d.ticket, now)

        article = insert_article(conn, p, ticket.id, now, d.from_stranger)
        kind = "created" if d.outcome is Outcome.CREATED else "follow-up"
        detail: dict[str, object] = {
            "message_id": p.message_id, "queue": ticket.queue.name, "from": p.msg.from_address,
            "recipients": list(p.envelope.rcpt_tos),
            "classification": sorted(p.classification.labels),
        }
        if d.found is not None and d.ticket is not None:
            detail["threaded_by"] = d.found.path
        events.append((None, kind, detail))
        if p.route.matched:
            events.append((None, "routed", {"rules": list(p.route.matched)}))
        events += self._add_participants(conn, p, d, ticket.id, now)
        insert_events(conn, [
            event_row(other or ticket.id, None if other else article.id, kind_, now, detail)
            for other, kind_, detail in events
        ])
        self.responder.after_store(conn, StoredMessage(
            msg=p.msg, envelope=p.envelope, classification=p.classification, route=p.route,
            ticket=ticket, article=article, outcome=d.outcome, closed_policy=d.closed_policy,
            queue_refused_new=d.refused_new, now=now,
            sender_is_participant=not d.from_stranger,
        ))
        return Disposition(d.outcome, p.message_id, ticket.number, ticket.queue.name,
                           article.id, notes=p.route.matched)

    @staticmethod
    def _stranger(p: Prepared, d: Decision) -> dict[str, object]:
        """The history detail naming a stranger's follow-up and what became of it."""
        assert d.found is not None and d.found.sender is not None
        return {"from": p.msg.from_address, "message_id": p.message_id,
                "policy": d.stranger_policy, "path": d.found.path,
                "why": d.found.sender.why}

    def _hold(self, conn: Connection, p: Prepared, d: Decision, now: dt.datetime,
              ) -> Disposition:
        """Keep a stranger's follow-up out of the ticket until an admin decides."""
        assert d.ticket is not None
        held_id = insert_held(conn, p, d.ticket.id, now)
        insert_events(conn, [event_row(d.ticket.id, None, "stranger-follow-up", now,
                                       {**self._stranger(p, d), "held_id": held_id})])
        return Disposition(Outcome.HELD, p.message_id, queue=d.queue,
                           notes=(*p.route.matched, f"held {held_id}"))

    def _add_participants(self, conn: Connection, p: Prepared, d: Decision, ticket_id: int,
                          now: dt.datetime) -> list[EventSpec]:
        """Who `p` makes a participant: everyone on a new ticket's first mail; the To/Cc
        (and, by proof, the From) of a participant's follow-up; nobody for a stranger's."""
        if d.ticket is None:
            added = self.participants.from_message(p, sender="customer")
        elif (d.from_stranger or d.found is None or d.found.circle is None
              or d.found.path not in THREADED_PATHS):
            return []
        else:
            added = self.participants.from_message(
                p, d.found.circle.addresses, sender="from" if d.found.path == PROOF else "")
        if not added:
            return []
        add_participants(conn, ticket_id, added, now)
        return [(None, "participants-added", {
            "added": [{"address": a, "source": s} for a, s in added],
            "by": "message", "message_id": p.message_id})]

    def process(self, raw: bytes, envelope: Envelope) -> Disposition:
        """Prepare and store one message in its own transaction (the pipe's path)."""
        return store_alone(self.engine, self, self.prepare(raw, envelope))

    def size_rejection(self, size: int, envelope: Envelope) -> SizeRejection:
        """A message we refused for its size, as `record_size_rejections` counts it."""
        return SizeRejection(envelope.mail_from or "", size,
                             self.config.intake.max_message_size, list(envelope.rcpt_tos))

    def record_size_rejected(self, size: int, envelope: Envelope) -> None:
        """Keep a trace of a message we refused for its size (it is not stored)."""
        with self.engine.begin() as conn:
            record_size_rejections(conn, [self.size_rejection(size, envelope)], self.clock())

    def sync_queues(self) -> None:
        """Create the configured queues so they show up before their first ticket."""
        with self.engine.begin() as conn:
            for name in self.config.queue_names:
                queue_id(conn, name, self.clock())
