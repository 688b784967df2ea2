"""The intake core: raw bytes + envelope in, a Disposition out, one transaction.

Every entry point (pipe, LMTP/SMTP server, spool replay) calls this module and only
translates its result or its exception into replies or exit codes. Work is split into
`prepare` (parse, classify, route: pure CPU, no database) and `store` (thread and write
inside the caller's transaction), so the server can prepare off the event loop and
commit several messages in one transaction (group commit).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from autoresponse.responder import NullResponder, Responder, StoredMessage
from rules.route import NullRouter, Route, Router
from ticketstore import numbers
from ticketstore.models import Article, Attachment, Event, Queue, Ticket, utcnow

from .addresses import QueueMap
from .classify import BOUNCE, OUT_OF_OFFICE, Classification, bounced_message_ids, classify
from .config import Config
from .envelope import Disposition, Envelope, Outcome
from .parse import ParsedMessage, parse_message
from .subject import find_numbers, strip_tags

log = logging.getLogger("ticketgate.intake")

# Header fields MTAs add on the way in; they differ between deliveries of one message.
TRACE_HEADERS = frozenset(
    {b"return-path", b"delivered-to", b"x-original-to", b"received", b"x-envelope-from",
     b"x-envelope-to", b"x-spam-status", b"x-spam-checker-version", b"x-virus-scanned"}
)
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def content_hash(raw: bytes) -> str:
    """sha256 of the message with trace headers removed and line ends normalised.

    The same message delivered over LMTP (CRLF) and through pipe(8) (LF, with a
    Delivered-To or mbox `From ` line prepended) hashes the same, so its second copy
    is a duplicate.
    """
    data = raw.replace(b"\r\n", b"\n")
    if data.startswith(b"From "):  # mbox From_ line (procmail, pipe(8) flag F)
        data = data.partition(b"\n")[2]
    head, sep, body = data.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        m = _HEADER_NAME.match(line)
        skipping = bool(m and m.group(1).lower() in TRACE_HEADERS)
        if not skipping:
            kept.append(line)
    h = hashlib.sha256()
    h.update(b"\n".join(kept))
    h.update(sep)
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True)
class Prepared:
    """A message parsed, classified and routed; ready to be stored."""

    raw: bytes
    envelope: Envelope
    msg: ParsedMessage
    classification: Classification
    route: Route
    message_id: str
    content_hash: str
    queue: str  # from the recipients; a rule's queue wins for new tickets
    notes: tuple[str, ...] = field(default_factory=tuple)


class Intake:
    """The core, configured once; safe to share between threads (no mutable state but caches)."""

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
        self._queue_ids: dict[str, int] = {}

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
        chash = content_hash(raw)
        message_id = msg.message_id or f"{chash[:40]}@ticketgate.invalid"
        recipients = envelope.rcpt_tos or (
            msg.headers.get("delivered-to", ()) + msg.headers.get("x-original-to", ())
            + msg.to + msg.cc
        )
        queue = self.queues.queue_for(recipients) or self.config.tickets.default_queue
        return Prepared(raw, envelope, msg, classification, route, message_id, chash, queue)

    def store(self, session: Session, p: Prepared) -> Disposition:
        """Thread and write one prepared message in `session` (no commit here)."""
        now = self.clock()
        dup = session.execute(
            select(Article.id, Ticket.number, Queue.name)
            .join(Ticket, Article.ticket_id == Ticket.id)
            .join(Queue, Ticket.queue_id == Queue.id)
            .where(Article.message_id == p.message_id, Article.content_hash == p.content_hash)
            .limit(1)
        ).first()
        if dup is not None:
            return Disposition(Outcome.DUPLICATE, p.message_id, dup.number, dup.name, dup.id)

        if p.route.ignore:
            session.add(Event(kind="ignored", created_at=now, detail={
                "rules": list(p.route.matched), "message_id": p.message_id,
                "from": p.msg.from_address, "subject": p.msg.subject[:200],
            }))
            session.flush()
            return Disposition(Outcome.IGNORED, p.message_id, notes=p.route.matched)

        ticket = self._find_ticket(session, p)
        closed_policy: str | None = None
        refused_new = False
        outcome = Outcome.FOLLOW_UP
        events: list[Event] = []
        if ticket is not None and ticket.state == "closed":
            closed_policy = self.config.queue(ticket.queue.name).follow_up_closed
            if not self._reopens(p):
                closed_policy = None  # bounces and vacation notices only attach
            if closed_policy == "new-ticket":
                old = ticket
                ticket = self._new_ticket(session, p, now)
                ticket.linked_ticket_id = old.id
                outcome = Outcome.CREATED
                events.append(Event(ticket_id=old.id, kind="linked", created_at=now,
                                    detail={"new_ticket": ticket.number}))
                events.append(Event(ticket_id=ticket.id, kind="linked", created_at=now,
                                    detail={"previous_ticket": old.number}))
            elif closed_policy == "reject":
                outcome = Outcome.REJECTED
                events.append(Event(ticket_id=ticket.id, kind="rejected", created_at=now,
                                    detail={"reason": "follow-up to a closed ticket",
                                            "message_id": p.message_id}))
            elif self._reopens(p):
                ticket.state = "open"
                ticket.closed_at = None
                events.append(Event(ticket_id=ticket.id, kind="reopened", created_at=now,
                                    detail={"message_id": p.message_id}))
        if ticket is None:
            ticket = self._new_ticket(session, p, now)
            outcome = Outcome.CREATED
            refused_new = not self.config.queue(ticket.queue.name).accept_new
            if refused_new:
                ticket.state = "closed"
                ticket.closed_at = now
                events.append(Event(ticket_id=ticket.id, kind="rejected", created_at=now,
                                    detail={"reason": "queue accepts no new tickets"}))
        elif outcome is Outcome.FOLLOW_UP:
            self._apply_follow_up_route(ticket, p.route, now, events)

        ticket.updated_at = now
        article = self._article(ticket, p, now)
        session.add(article)
        session.flush()
        kind = "created" if outcome is Outcome.CREATED else "follow-up"
        if outcome is Outcome.REJECTED:
            kind = "follow-up"
        events.append(Event(ticket_id=ticket.id, article_id=article.id, kind=kind,
                            created_at=now, detail=self._event_detail(p, ticket)))
        if p.route.matched:
            events.append(Event(ticket_id=ticket.id, article_id=article.id, kind="routed",
                                created_at=now, detail={"rules": list(p.route.matched)}))
        for ev in events:
            if ev.ticket_id is None:
                ev.ticket_id = ticket.id
            if ev.article_id is None and ev.kind in ("reopened", "rejected"):
                ev.article_id = article.id
        session.add_all(events)
        self.responder.after_store(session, StoredMessage(
            msg=p.msg, envelope=p.envelope, classification=p.classification, route=p.route,
            ticket=ticket, article=article, outcome=outcome, closed_policy=closed_policy,
            queue_refused_new=refused_new, now=now,
        ))
        session.flush()
        return Disposition(outcome, p.message_id, ticket.number, ticket.queue.name, article.id,
                           notes=p.route.matched)

    def process(self, raw: bytes, envelope: Envelope) -> Disposition:
        """Prepare and store one message in its own transaction (the pipe's path).

        A unique-constraint race with a concurrent delivery of the same message is
        retried once, and then shows up as a duplicate.
        """
        prepared = self.prepare(raw, envelope)
        for attempt in (1, 2):
            try:
                with self.factory() as session, session.begin():
                    return self.store(session, prepared)
            except sa_exc.IntegrityError:
                if attempt == 2:
                    raise
                log.debug("integrity race for %s, retrying", prepared.message_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def record_size_rejected(self, size: int, envelope: Envelope) -> None:
        """Keep a trace of a message we refused for its size (it is not stored)."""
        with self.factory() as session, session.begin():
            session.add(Event(kind="size-rejected", created_at=self.clock(), detail={
                "size": size, "limit": self.config.intake.max_message_size,
                "mail_from": envelope.mail_from or "", "rcpt_to": list(envelope.rcpt_tos),
            }))

    # -- threading ------------------------------------------------------------------------

    def _find_ticket(self, session: Session, p: Prepared) -> Ticket | None:
        tcfg = self.config.tickets
        candidates = find_numbers(p.msg.subject, tcfg.hook)
        if tcfg.body_threading:
            candidates += find_numbers(p.msg.text[:20000], tcfg.hook)
        for number in candidates:
            if not numbers.is_plausible(tcfg.generator, number):
                continue
            ticket = session.execute(
                select(Ticket).where(Ticket.number == number)
            ).scalar_one_or_none()
            if ticket is not None:
                return ticket
        ticket = self._by_references(session, p)
        if ticket is not None:
            return ticket
        if BOUNCE in p.classification.labels:
            ticket = self._by_bounced_message(session, p)
            if ticket is not None:
                return ticket
        if p.route.thread_key:
            return session.execute(
                select(Ticket)
                .where(Ticket.thread_key == p.route.thread_key, Ticket.state != "closed")
                .order_by(Ticket.id.desc())
                .limit(1)
            ).scalar_one_or_none()
        return None

    def _by_references(self, session: Session, p: Prepared) -> Ticket | None:
        # In-Reply-To names the parent; References ends with it: try nearest first.
        ids = list(dict.fromkeys(p.msg.in_reply_to + tuple(reversed(p.msg.references))))
        ids = [i for i in ids if i != p.message_id][:50]
        if not ids:
            return None
        rows = session.execute(
            select(Article.message_id, Article.ticket_id).where(Article.message_id.in_(ids))
        ).all()
        by_id = {r.message_id: r.ticket_id for r in rows}
        for mid in ids:
            if mid in by_id:
                return session.get(Ticket, by_id[mid])
        return None

    def _by_bounced_message(self, session: Session, p: Prepared) -> Ticket | None:
        """A bounce of one of our outgoing mails: its returned copy names our Message-ID."""
        ids = [i for i in bounced_message_ids(p.raw) if i != p.message_id]
        if not ids:
            return None
        rows = session.execute(
            select(Article.message_id, Article.ticket_id)
            .where(Article.message_id.in_(ids), Article.direction == "out")
        ).all()
        by_id = {r.message_id: r.ticket_id for r in rows}
        for mid in ids:
            if mid in by_id:
                return session.get(Ticket, by_id[mid])
        return None

    @staticmethod
    def _reopens(p: Prepared) -> bool:
        """Vacation notices and bounces thread, but do not reopen a closed ticket."""
        return not ({OUT_OF_OFFICE, BOUNCE} & p.classification.labels)

    # -- writing --------------------------------------------------------------------------

    def _new_ticket(self, session: Session, p: Prepared, now: dt.datetime) -> Ticket:
        tcfg = self.config.tickets
        queue_name = p.route.queue or p.queue
        number = numbers.new_ticket_number(
            session, tcfg.generator, tcfg.system_id, now, tcfg.min_counter_size
        )
        address = p.msg.from_address or (p.envelope.mail_from or "").lower()
        ticket = Ticket(
            number=number,
            title=(strip_tags(p.msg.subject, tcfg.hook) or "(no subject)")[:1000],
            queue_id=self.queue_id(session, queue_name),
            state=p.route.state or "new",
            priority=p.route.priority or 3,
            customer_address=address,
            customer_name=p.msg.from_name,
            customer_domain=address.rpartition("@")[2],
            customer_id=p.route.customer or "",
            tags=sorted(set(p.route.tags)),
            thread_key=p.route.thread_key,
            created_at=now,
            updated_at=now,
            closed_at=now if p.route.state == "closed" else None,
        )
        session.add(ticket)
        session.flush()
        return ticket

    def _apply_follow_up_route(
        self, ticket: Ticket, route: Route, now: dt.datetime, events: list[Event]
    ) -> None:
        """On follow-ups rules may add tags and change the state; queue/priority stay."""
        if route.tags:
            ticket.tags = sorted(set(ticket.tags or []) | set(route.tags))
        new_state = route.state
        if new_state is None and ticket.state == "pending":
            new_state = "open"
        if new_state and new_state != ticket.state:
            events.append(Event(ticket_id=ticket.id, kind="state-changed", created_at=now,
                                detail={"from": ticket.state, "to": new_state,
                                        "by": ",".join(route.matched) or "follow-up"}))
            ticket.state = new_state
            ticket.closed_at = now if new_state == "closed" else None

    def _article(self, ticket: Ticket, p: Prepared, now: dt.datetime) -> Article:
        m = p.msg
        kind = "email"
        if BOUNCE in p.classification.labels:
            kind = "bounce"
        elif OUT_OF_OFFICE in p.classification.labels:
            kind = "out-of-office"
        article = Article(
            ticket=ticket,
            direction="in",
            kind=kind,
            message_id=p.message_id,
            content_hash=p.content_hash,
            in_reply_to=" ".join(f"<{i}>" for i in m.in_reply_to),
            references=" ".join(f"<{i}>" for i in m.references),
            from_address=m.from_address,
            from_name=m.from_name,
            to=", ".join(m.to),
            cc=", ".join(m.cc),
            subject=m.subject,
            body_text=m.text,
            body_html=m.html,
            raw=p.raw,
            size=len(p.raw),
            envelope_sender=p.envelope.mail_from or "",
            envelope_recipients=list(p.envelope.rcpt_tos),
            classification=sorted(p.classification.labels),
            created_at=now,
        )
        for att in m.attachments:
            article.attachments.append(Attachment(
                filename=att.filename, content_type=att.content_type, size=len(att.content),
                sha256=att.sha256, content=att.content,
            ))
        return article

    def _event_detail(self, p: Prepared, ticket: Ticket) -> dict[str, object]:
        return {
            "message_id": p.message_id,
            "queue": ticket.queue.name if ticket.queue else None,
            "from": p.msg.from_address,
            "recipients": list(p.envelope.rcpt_tos),
            "classification": sorted(p.classification.labels),
        }

    def queue_id(self, session: Session, name: str) -> int:
        """The id of queue `name`, created on first use (race-safe).

        Only ids committed by `sync_queues` are cached: one created inside a transaction
        that later rolls back must not be remembered.
        """
        cached = self._queue_ids.get(name)
        if cached is not None:
            return cached
        qid = session.execute(select(Queue.id).where(Queue.name == name)).scalar_one_or_none()
        if qid is None:
            dialect = session.get_bind().dialect.name
            mod = postgresql if dialect == "postgresql" else sqlite
            session.execute(
                mod.insert(Queue).values(name=name, created_at=self.clock())
                .on_conflict_do_nothing()
            )
            qid = session.execute(select(Queue.id).where(Queue.name == name)).scalar_one()
        return qid

    def sync_queues(self) -> None:
        """Create the configured queues so they show up before their first ticket."""
        with self.factory() as session, session.begin():
            ids = {name: self.queue_id(session, name) for name in self.config.queue_names}
        self._queue_ids.update(ids)
