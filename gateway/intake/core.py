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
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Config
from gateway.intake.outcome import Disposition, Outcome
from gateway.intake.ports import NullResponder, NullRouter, Responder, Route, Router, StoredMessage
from gateway.intake.recipients import QueueMap
from gateway.intake.transaction import store_alone
from gateway.mail.classify import (
    BOUNCE,
    OUT_OF_OFFICE,
    Classification,
    bounced_message_ids,
    classify,
)
from gateway.mail.envelope import Envelope
from gateway.mail.parse import ParsedMessage, parse_message
from gateway.mail.subject import find_numbers, strip_tags
from ticketstore import numbers
from ticketstore.db import dialect_insert
from ticketstore.models import Article, Attachment, Event, Queue, Ticket, utcnow
from ticketstore.statements import (
    MAX_MESSAGE_IDS,
    MAX_NUMBERS,
    STATEMENTS,
    detached,
    detached_ticket,
    numbered,
    ticket_snapshot,
    update_ticket,
)

log = logging.getLogger("ticketgate.intake")

# Header fields MTAs add on the way in; they differ between deliveries of one message.
TRACE_HEADERS = frozenset(
    {b"return-path", b"delivered-to", b"x-original-to", b"received", b"x-envelope-from",
     b"x-envelope-to", b"x-spam-status", b"x-spam-checker-version", b"x-virus-scanned"}
)
# A trace field: a line whose field name (the whole run of name characters) is one of
# TRACE_HEADERS, with the continuation lines after it.
_TRACE_FIELD = re.compile(
    rb"^(?:" + b"|".join(re.escape(n) for n in sorted(TRACE_HEADERS))
    + rb")[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*", re.MULTILINE | re.IGNORECASE)


def content_hash(raw: bytes) -> str:
    """sha256 of the message with trace headers removed and line ends normalised.

    The same message delivered over LMTP (CRLF) and through pipe(8) (LF, with a
    Delivered-To or mbox `From ` line prepended) hashes the same, so its second copy
    is a duplicate. Only the header block is normalised as a copy; the body is hashed
    in slices, so a 25 MB message is not copied (twice) to compute it.
    """
    start = 0
    if raw.startswith(b"From "):  # mbox From_ line (procmail, pipe(8) flag F)
        start = raw.find(b"\n") + 1 or len(raw)
    # The first blank line once CRLF is LF: "\n" then "\n" or "\r\n" (the first "\n"
    # may be the end of a CRLF).
    # "\n\r\n" first: in CRLF mail it is near the top, and "\n\n" then only needs
    # looking for before it (not through the whole body, where it never occurs).
    crlf = raw.find(b"\n\r\n", start)
    lf = raw.find(b"\n\n", start, len(raw) if crlf < 0 else crlf + 1)
    ends = [(i, n) for i, n in ((lf, 2), (crlf, 3)) if i >= 0]
    if ends:
        nl, width = min(ends)
        head_end = nl - 1 if nl > start and raw[nl - 1] == 0x0D else nl
        head, sep, body_start = raw[start:head_end].replace(b"\r\n", b"\n"), b"\n\n", nl + width
    else:
        head, sep, body_start = raw[start:].replace(b"\r\n", b"\n"), b"", len(raw)
    h = hashlib.sha256()
    # Every line ends in "\n" here, so a trace field (its line and the continuation
    # lines after it) is removed whole; the last "\n" is the one added.
    h.update(_TRACE_FIELD.sub(b"", head + b"\n")[:-1])
    h.update(sep)
    carry = b""
    for pos in range(body_start, len(raw), 1 << 18):
        chunk = carry + raw[pos:pos + (1 << 18)]
        carry = b""
        if chunk.endswith(b"\r") and pos + (1 << 18) < len(raw):
            chunk, carry = chunk[:-1], b"\r"  # may be half of a CRLF
        h.update(chunk.replace(b"\r\n", b"\n"))
    return h.hexdigest()


_Q = Queue.__table__
_ATT = Attachment.__table__

# SQLite copies a bound blob twice (the bind, the record) before writing it; a large
# attachment is inserted as a zeroblob (its column is the last one, so SQLite does not
# materialise it) and written through incremental blob I/O instead (issue 3's memory).
_STREAM_ABOVE = 1 << 20


def _insert_attachment_sqlite(conn: Connection, row: dict[str, Any]) -> None:
    content: bytes = row["content"]
    if len(content) <= _STREAM_ABOVE:
        conn.execute(insert(_ATT), [row])
        return
    values = dict(row, content=func.zeroblob(len(content)))
    att_id = conn.execute(insert(_ATT).values(**values).returning(_ATT.c.id)).scalar_one()
    view = memoryview(content)
    with conn.connection.driver_connection.blobopen("attachments", "content", att_id) as blob:
        for pos in range(0, len(view), _STREAM_ABOVE):
            blob.write(view[pos:pos + _STREAM_ABOVE])


def _event(
    ticket_id: int | None, article_id: int | None, kind: str, now: dt.datetime,
    detail: dict[str, object],
) -> dict[str, object]:
    return {"ticket_id": ticket_id, "article_id": article_id, "kind": kind,
            "created_at": now, "detail": detail}


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
    # Ticket numbers in the subject (find_numbers).
    subject_numbers: tuple[str, ...] = ()


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
        return Prepared(raw, envelope, msg, classification, route, message_id, chash, queue,
                        subject_numbers=tuple(find_numbers(msg.subject, self.config.tickets.hook)))

    @property
    def engine(self) -> Engine:
        return self.factory.kw["bind"]  # type: ignore[no-any-return]

    def store(self, conn: Connection, p: Prepared) -> Disposition:
        """Thread and write one prepared message on `conn`, inside its transaction.

        The statements are prebuilt (ticketstore/statements.py): per message, SQLAlchemy's
        execution machinery cost several times what the database needed. Ticket and
        Article objects handed to the responder are detached snapshots: refer to them by id.
        """
        now = self.clock()
        dup = STATEMENTS(conn, "duplicate").first(
            conn, {"mid": p.message_id, "chash": p.content_hash})
        if dup is not None:
            return Disposition(Outcome.DUPLICATE, p.message_id, dup["number"], dup["name"],
                               dup["id"])

        if p.route.ignore:
            STATEMENTS(conn, "insert_event").execute(conn, _event(None, None, "ignored", now, {
                "rules": list(p.route.matched), "message_id": p.message_id,
                "from": p.msg.from_address, "subject": p.msg.subject[:200],
            }))
            return Disposition(Outcome.IGNORED, p.message_id, notes=p.route.matched)

        ticket = self._find_ticket(conn, p)
        closed_policy: str | None = None
        refused_new = False
        outcome = Outcome.FOLLOW_UP
        # (ticket id or None for "this ticket", kind, detail); article id filled in below.
        events: list[tuple[int | None, str, dict[str, object]]] = []
        changes: dict[str, object] = {}
        if ticket is not None and ticket.state == "closed":
            closed_policy = self.config.queue(ticket.queue.name).follow_up_closed
            if not self._reopens(p):
                closed_policy = None  # bounces and vacation notices only attach
            if closed_policy == "new-ticket":
                old = ticket
                ticket = self._new_ticket(conn, p, now, linked_to=old.id)
                outcome = Outcome.CREATED
                events.append((old.id, "linked", {"new_ticket": ticket.number}))
                events.append((None, "linked", {"previous_ticket": old.number}))
            elif closed_policy == "reject":
                outcome = Outcome.REJECTED
                events.append((None, "rejected", {"reason": "follow-up to a closed ticket",
                                                  "message_id": p.message_id}))
            elif self._reopens(p):
                changes.update(state="open", closed_at=None)
                events.append((None, "reopened", {"message_id": p.message_id}))
        if ticket is None:
            refused_new = not self.config.queue(p.route.queue or p.queue).accept_new
            ticket = self._new_ticket(conn, p, now, refused=refused_new)
            outcome = Outcome.CREATED
            if refused_new:
                events.append((None, "rejected", {"reason": "queue accepts no new tickets"}))
        elif outcome is Outcome.FOLLOW_UP:
            changes.update(self._follow_up_changes(ticket, p.route, now, events))
        if outcome is not Outcome.CREATED:  # a new ticket was inserted with updated_at = now
            changes["updated_at"] = now
            STATEMENTS(conn, update_ticket(frozenset(changes))).execute(
                conn, {"ticket_id": ticket.id, **changes})
            ticket.__dict__.update(changes)

        article = self._insert_article(conn, ticket, p, now)
        kind = "created" if outcome is Outcome.CREATED else "follow-up"
        events.append((None, kind, self._event_detail(p, ticket)))
        if p.route.matched:
            events.append((None, "routed", {"rules": list(p.route.matched)}))
        STATEMENTS(conn, "insert_event").execute_many(conn, [
            _event(tid or ticket.id, None if tid else article.id, kind_, now, detail)
            for tid, kind_, detail in events
        ])
        self.responder.after_store(conn, StoredMessage(
            msg=p.msg, envelope=p.envelope, classification=p.classification, route=p.route,
            ticket=ticket, article=article, outcome=outcome, closed_policy=closed_policy,
            queue_refused_new=refused_new, now=now,
        ))
        return Disposition(outcome, p.message_id, ticket.number, ticket.queue.name, article.id,
                           notes=p.route.matched)

    def process(self, raw: bytes, envelope: Envelope) -> Disposition:
        """Prepare and store one message in its own transaction (the pipe's path)."""
        return store_alone(self.engine, self, self.prepare(raw, envelope))

    def record_size_rejected(self, size: int, envelope: Envelope) -> None:
        """Keep a trace of a message we refused for its size (it is not stored)."""
        with self.factory() as session, session.begin():
            session.add(Event(kind="size-rejected", created_at=self.clock(), detail={
                "size": size, "limit": self.config.intake.max_message_size,
                "mail_from": envelope.mail_from or "", "rcpt_to": list(envelope.rcpt_tos),
            }))

    # -- threading ------------------------------------------------------------------------

    def _find_ticket(self, conn: Connection, p: Prepared) -> Ticket | None:
        """The ticket this message follows up, as a detached snapshot, or None."""
        tcfg = self.config.tickets
        candidates = p.subject_numbers
        if tcfg.body_threading:
            candidates += tuple(find_numbers(p.msg.text[:20000], tcfg.hook))
        plausible = list(dict.fromkeys(
            n for n in candidates if numbers.is_plausible(tcfg.generator, n)))[:MAX_NUMBERS]
        if plausible:
            rows = {r["number"]: r for r in STATEMENTS(
                conn, f"tickets_by_numbers/{len(plausible)}").rows(conn, numbered("n", plausible))}
            for number in plausible:
                if number in rows:
                    return ticket_snapshot(rows[number])
        ticket = self._by_references(conn, p)
        if ticket is not None:
            return ticket
        if BOUNCE in p.classification.labels:
            ticket = self._by_bounced_message(conn, p)
            if ticket is not None:
                return ticket
        if p.route.thread_key:
            row = STATEMENTS(conn, "ticket_by_thread_key").first(conn, {"key": p.route.thread_key})
            return ticket_snapshot(row) if row is not None else None
        return None

    def _by_references(self, conn: Connection, p: Prepared) -> Ticket | None:
        # In-Reply-To names the parent; References ends with it: try nearest first.
        ids = list(dict.fromkeys(p.msg.in_reply_to + tuple(reversed(p.msg.references))))
        return self._ticket_of_message(conn, [i for i in ids if i != p.message_id])

    def _by_bounced_message(self, conn: Connection, p: Prepared) -> Ticket | None:
        """A bounce of one of our outgoing mails: its returned copy names our Message-ID."""
        ids = list(dict.fromkeys(i for i in bounced_message_ids(p.raw) if i != p.message_id))
        return self._ticket_of_message(conn, ids, direction="out")

    @staticmethod
    def _ticket_of_message(
        conn: Connection, ids: list[str], direction: str | None = None
    ) -> Ticket | None:
        """The ticket of the first of `ids` that is a stored Message-ID."""
        ids = ids[:MAX_MESSAGE_IDS]
        if not ids:
            return None
        name = f"tickets_of_messages/{len(ids)}" + ("/dir" if direction else "")
        params: dict[str, str] = numbered("m", ids)
        if direction:
            params["direction"] = direction
        by_id = {r["found_message_id"]: r for r in STATEMENTS(conn, name).rows(conn, params)}
        for mid in ids:
            if mid in by_id:
                return ticket_snapshot(by_id[mid])
        return None

    @staticmethod
    def _reopens(p: Prepared) -> bool:
        """Vacation notices and bounces thread, but do not reopen a closed ticket."""
        return not ({OUT_OF_OFFICE, BOUNCE} & p.classification.labels)

    # -- writing --------------------------------------------------------------------------

    def _new_ticket(
        self, conn: Connection, p: Prepared, now: dt.datetime,
        linked_to: int | None = None, refused: bool = False,
    ) -> Ticket:
        tcfg = self.config.tickets
        number = numbers.new_ticket_number(
            conn, tcfg.generator, tcfg.system_id, now, tcfg.min_counter_size
        )
        values = self._ticket_values(p, number, now, linked_to, refused)
        values["queue_id"] = self.queue_id(conn, p.route.queue or p.queue)
        values["id"] = STATEMENTS(conn, "insert_ticket").scalar(conn, values)
        return detached_ticket(values, p.route.queue or p.queue)

    def _ticket_values(self, p: Prepared, number: str, now: dt.datetime,
                       linked_to: int | None = None, refused: bool = False,
                       ) -> dict[str, Any]:
        """A new ticket's columns but its queue id."""
        base = self._ticket_base(p, refused)
        return {**base, "number": number, "linked_ticket_id": linked_to, "created_at": now,
                "updated_at": now, "closed_at": now if base["state"] == "closed" else None}

    def _ticket_base(self, p: Prepared, refused: bool = False) -> dict[str, Any]:
        """The columns of the ticket `p` would open that depend on the message alone
        (not its number, time or link): also what the auto-responder's preview shows."""
        address = p.msg.from_address or (p.envelope.mail_from or "").lower()
        state = "closed" if refused else (p.route.state or "new")
        return dict(
            title=(strip_tags(p.msg.subject, self.config.tickets.hook) or "(no subject)")[:1000],
            state=state,
            priority=p.route.priority or 3,
            customer_address=address,
            customer_name=p.msg.from_name,
            customer_domain=address.rpartition("@")[2],
            customer_id=p.route.customer or "",
            tags=sorted(set(p.route.tags)),
            thread_key=p.route.thread_key,
        )

    @staticmethod
    def _follow_up_changes(
        ticket: Ticket, route: Route, now: dt.datetime,
        events: list[tuple[int | None, str, dict[str, object]]],
    ) -> dict[str, object]:
        """On follow-ups rules may add tags and change the state; queue/priority stay."""
        changes: dict[str, object] = {}
        if route.tags and not set(route.tags) <= set(ticket.tags or []):
            changes["tags"] = sorted(set(ticket.tags or []) | set(route.tags))
        new_state = route.state
        if new_state is None and ticket.state == "pending":
            new_state = "open"
        if new_state and new_state != ticket.state:
            events.append((None, "state-changed", {
                "from": ticket.state, "to": new_state,
                "by": ",".join(route.matched) or "follow-up"}))
            changes["state"] = new_state
            changes["closed_at"] = now if new_state == "closed" else None
        return changes

    def _insert_article(
        self, conn: Connection, ticket: Ticket, p: Prepared, now: dt.datetime
    ) -> Article:
        m = p.msg
        kind = "email"
        if BOUNCE in p.classification.labels:
            kind = "bounce"
        elif OUT_OF_OFFICE in p.classification.labels:
            kind = "out-of-office"
        values: dict[str, object] = dict(
            ticket_id=ticket.id,
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
        values["id"] = STATEMENTS(conn, "insert_article").scalar(conn, values)
        if m.attachments:
            rows = [dict(article_id=values["id"], filename=att.filename,
                         content_type=att.content_type, size=len(att.content),
                         sha256=att.sha256, content=att.content)
                    for att in m.attachments]
            if conn.dialect.name == "sqlite" and any(r["size"] > _STREAM_ABOVE for r in rows):
                for row in rows:  # one by one, in order (ids order the attachments)
                    _insert_attachment_sqlite(conn, row)
            else:
                conn.execute(insert(Attachment.__table__), rows)
        return detached(Article, values)

    def _event_detail(self, p: Prepared, ticket: Ticket) -> dict[str, object]:
        return {
            "message_id": p.message_id,
            "queue": ticket.queue.name if ticket.queue else None,
            "from": p.msg.from_address,
            "recipients": list(p.envelope.rcpt_tos),
            "classification": sorted(p.classification.labels),
        }

    def queue_id(self, conn: Connection, name: str) -> int:
        """The id of queue `name`, created on first use (race-safe).

        Only ids committed by `sync_queues` are cached: one created inside a transaction
        that later rolls back must not be remembered.
        """
        cached = self._queue_ids.get(name)
        if cached is not None:
            return cached
        qid = conn.execute(select(_Q.c.id).where(_Q.c.name == name)).scalar_one_or_none()
        if qid is None:
            conn.execute(
                dialect_insert(conn.dialect.name)(_Q).values(name=name, created_at=self.clock())
                .on_conflict_do_nothing()
            )
            qid = conn.execute(select(_Q.c.id).where(_Q.c.name == name)).scalar_one()
        return int(qid)

    def sync_queues(self) -> None:
        """Create the configured queues so they show up before their first ticket."""
        with self.factory() as session, session.begin():
            conn = session.connection()
            ids = {name: self.queue_id(conn, name) for name in self.config.queue_names}
        self._queue_ids.update(ids)
