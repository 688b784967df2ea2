"""Writing a message: its ticket, article, attachments and history events.

Everything runs on the caller's connection, inside its transaction; nothing here commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from gateway.config import TicketsConfig
from gateway.mail.classify import BOUNCE, OUT_OF_OFFICE
from gateway.mail.subject import strip_tags
from ticketstore import numbers
from ticketstore.db import dialect_insert
from ticketstore.models import Article, Attachment, Event, Queue, Ticket
from ticketstore.snapshots import ArticleSnapshot, TicketSnapshot, ticket_snapshot

from .columns import fit, thread_key
from .prepared import Prepared

_T, _A, _ATT = Ticket.__table__, Article.__table__, Attachment.__table__
_Q, _E = Queue.__table__, Event.__table__
# The statements are built once: SQLAlchemy then finds their compiled form in its cache
# without generating a cache key for a new statement object on every message.
_INSERT_TICKET = insert(_T).returning(_T.c.id)
_INSERT_ARTICLE = insert(_A).returning(_A.c.id)
_INSERT_ATTACHMENT = insert(_ATT)
_INSERT_EVENT = insert(_E)
# SET takes the columns of the parameters given (all but `ticket_id`).
_UPDATE_TICKET = update(_T).where(_T.c.id == bindparam("ticket_id"))
_QUEUE_ID = select(_Q.c.id).where(_Q.c.name == bindparam("name"))

# SQLite copies a bound blob twice (the bind, the record) before writing it: a larger
# attachment is inserted as a zeroblob (its column is the last one, so SQLite does not
# materialise it) and then written in pieces through incremental blob I/O.
STREAM_ABOVE = 1 << 20


def ticket_values(config: TicketsConfig, p: Prepared, number: str, now: dt.datetime,
                  refused: bool = False, linked_to: int | None = None) -> dict[str, Any]:
    """The columns of the ticket `p` opens, but its id and queue id (cut to fit: columns.py)."""
    address = p.msg.from_address or (p.envelope.mail_from or "").lower()
    state = "closed" if refused else (p.route.state or "new")
    return dict(
        number=number,
        title=(strip_tags(p.msg.subject, config.hook) or "(no subject)")[:1000],
        state=state,
        priority=p.route.priority or 3,
        customer_address=fit(_T.c.customer_address, address),
        customer_name=p.msg.from_name,
        customer_domain=fit(_T.c.customer_domain, address.rpartition("@")[2]),
        customer_id=fit(_T.c.customer_id, p.route.customer or ""),
        tags=sorted(set(p.route.tags)),
        thread_key=thread_key(p.route.thread_key),
        linked_ticket_id=linked_to,
        created_at=now,
        updated_at=now,
        closed_at=now if state == "closed" else None,
    )


def insert_ticket(conn: Connection, config: TicketsConfig, p: Prepared, queue: str,
                  now: dt.datetime, refused: bool = False, linked_to: int | None = None,
                  ) -> TicketSnapshot:
    number = numbers.new_ticket_number(conn, config.generator, config.system_id, now,
                                       config.min_counter_size)
    values = ticket_values(config, p, number, now, refused, linked_to)
    values["queue_id"] = queue_id(conn, queue, now)
    values["id"] = conn.execute(_INSERT_TICKET, values).scalar_one()
    return ticket_snapshot(values, queue)


def update_ticket(conn: Connection, ticket: TicketSnapshot, changes: dict[str, Any],
                  ) -> TicketSnapshot:
    conn.execute(_UPDATE_TICKET, {"ticket_id": ticket.id, **changes})
    return dataclasses.replace(ticket, **changes)


def article_values(p: Prepared, ticket_id: int, now: dt.datetime,
                   from_stranger: bool = False) -> dict[str, Any]:
    """The columns of the incoming article `p` is stored as, but its id.

    `p.message_id` is already a key that fits (`columns.message_id_key`), the envelope's
    addresses are text any database takes (`Envelope.as_text`, in `Intake.prepare`).
    """
    m = p.msg
    kind = "email"
    if BOUNCE in p.classification.labels:
        kind = "bounce"
    elif OUT_OF_OFFICE in p.classification.labels:
        kind = "out-of-office"
    return dict(
        ticket_id=ticket_id,
        direction="in",
        kind=kind,
        message_id=p.message_id,
        content_hash=p.content_hash,
        in_reply_to=" ".join(f"<{i}>" for i in m.in_reply_to),
        references=" ".join(f"<{i}>" for i in m.references),
        from_address=fit(_A.c.from_address, m.from_address),
        from_name=m.from_name,
        to=", ".join(m.to),
        cc=", ".join(m.cc),
        subject=m.subject,
        body_text=m.text,
        body_html=m.html,
        raw=p.raw,
        size=len(p.raw),
        envelope_sender=fit(_A.c.envelope_sender, p.envelope.mail_from or ""),
        envelope_recipients=list(p.envelope.rcpt_tos),
        classification=sorted(p.classification.labels),
        created_at=now,
        dkim=p.verdict.dkim,
        aligned=p.verdict.aligned,
        dmarc=p.verdict.dmarc,
        aligned_failed=p.verdict.aligned_failed,
        verdict_source=p.verdict.source[:300],
        from_stranger=from_stranger,
    )


def insert_article(conn: Connection, p: Prepared, ticket_id: int, now: dt.datetime,
                   from_stranger: bool = False) -> ArticleSnapshot:
    """The article and its attachments (in order: their ids order them)."""
    values = article_values(p, ticket_id, now, from_stranger)
    values["id"] = conn.execute(_INSERT_ARTICLE, values).scalar_one()
    rows = [dict(article_id=values["id"], filename=att.filename,
                 content_type=fit(_ATT.c.content_type, att.content_type),
                 size=len(att.content), sha256=att.sha256,
                 content=att.content) for att in p.msg.attachments]
    if conn.dialect.name == "sqlite" and any(r["size"] > STREAM_ABOVE for r in rows):
        for row in rows:
            _insert_attachment_sqlite(conn, row)
    elif rows:
        conn.execute(_INSERT_ATTACHMENT, rows)
    return ArticleSnapshot(**values)


def _insert_attachment_sqlite(conn: Connection, row: dict[str, Any]) -> None:
    content: bytes = row["content"]
    if len(content) <= STREAM_ABOVE:
        conn.execute(_INSERT_ATTACHMENT, row)
        return
    values = dict(row, content=func.zeroblob(len(content)))
    att_id = conn.execute(insert(_ATT).values(values).returning(_ATT.c.id)).scalar_one()
    view = memoryview(content)
    with conn.connection.driver_connection.blobopen(  # type: ignore[union-attr]
            "attachments", "content", att_id) as blob:
        for pos in range(0, len(view), STREAM_ABOVE):
            blob.write(view[pos:pos + STREAM_ABOVE])


def event_row(ticket_id: int | None, article_id: int | None, kind: str, now: dt.datetime,
              detail: dict[str, object]) -> dict[str, object]:
    return {"ticket_id": ticket_id, "article_id": article_id, "kind": kind,
            "created_at": now, "detail": detail}


def insert_events(conn: Connection, rows: Sequence[dict[str, object]]) -> None:
    conn.execute(_INSERT_EVENT, list(rows))


def queue_id(conn: Connection, name: str, now: dt.datetime) -> int:
    """The id of queue `name`, created on first use (safe against a concurrent writer)."""
    qid = conn.execute(_QUEUE_ID, {"name": name}).scalar_one_or_none()
    if qid is None:
        conn.execute(dialect_insert(conn.dialect.name)(_Q).values(name=name, created_at=now)
                     .on_conflict_do_nothing())
        qid = conn.execute(_QUEUE_ID, {"name": name}).scalar_one()
    return int(qid)
