"""SQLAlchemy models: queues, tickets, articles, attachments, events, counters, outbox.

The schema is shared by every part of ticketgate; Alembic migrations in
`ticketstore/migrations` create and evolve it. Times are stored as timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

TICKET_STATES = ("new", "open", "pending", "closed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on every backend (SQLite drops tzinfo on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


class Queue(Base):
    __tablename__ = "queues"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(Text, default="")
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id"))
    state: Mapped[str] = mapped_column(String(16), default="new")
    priority: Mapped[int] = mapped_column(Integer, default=3)
    customer_address: Mapped[str] = mapped_column(String(320), default="")
    customer_name: Mapped[str] = mapped_column(Text, default="")
    customer_domain: Mapped[str] = mapped_column(String(255), default="", index=True)
    # A customer-company id set by rules (frequent customers), "" when unknown.
    customer_id: Mapped[str] = mapped_column(String(200), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Correlation key for robot mail (rules' thread_key); only open tickets are matched.
    thread_key: Mapped[str | None] = mapped_column(String(500), nullable=True, index=True)
    # The ticket this one continues: a closed one (follow_up_closed = "new-ticket"), or the
    # one a stranger wrote to by number (stranger_follow_up = "new-ticket").
    linked_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    queue: Mapped[Queue] = relationship(lazy="joined")
    articles: Mapped[list[Article]] = relationship(
        back_populates="ticket", order_by="Article.id", foreign_keys="Article.ticket_id"
    )
    events: Mapped[list[Event]] = relationship(
        back_populates="ticket", order_by="Event.id", foreign_keys="Event.ticket_id"
    )

    __table_args__ = (
        Index("ix_tickets_queue_state", "queue_id", "state"),
        Index("ix_tickets_created_at", "created_at"),
        Index("ix_tickets_state_created", "state", "created_at"),
        # Status page: tickets created/closed per customer domain per month (0002_status).
        Index("ix_tickets_created_domain", "created_at", "customer_domain"),
        Index("ix_tickets_closed_domain", "closed_at", "customer_domain"),
    )


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # "in" | "out"
    # email | auto-reply | notification | reject | bounce | out-of-office
    kind: Mapped[str] = mapped_column(String(32), default="email")
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    # sha256 over the message minus the trace headers MTAs prepend (see gateway/intake/dedupe.py).
    content_hash: Mapped[str] = mapped_column(String(64))
    in_reply_to: Mapped[str] = mapped_column(Text, default="")
    references: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    from_name: Mapped[str] = mapped_column(Text, default="")
    to: Mapped[str] = mapped_column(Text, default="")
    cc: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    envelope_sender: Mapped[str] = mapped_column(String(320), default="")
    envelope_recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The classification the intake computed (auto-submitted, bounce, ...), for later audit.
    classification: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The sender verdict (gateway/mail/verdict.py); source "off": not checked.
    dkim: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    aligned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    dmarc: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    aligned_failed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    verdict_source: Mapped[str] = mapped_column(String(300), default="off", server_default="off")
    # Written by someone who is not a participant (stranger_follow_up = "accept", or a
    # held message released onto the ticket): agents must not read it as the customer's.
    from_stranger: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    ticket: Mapped[Ticket] = relationship(back_populates="articles", foreign_keys=[ticket_id])
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="article", order_by="Attachment.id"
    )

    __table_args__ = (
        UniqueConstraint("message_id", "content_hash", name="uq_articles_message"),
        Index("ix_articles_direction_created", "direction", "created_at"),
    )


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"), index=True)
    filename: Mapped[str] = mapped_column(Text, default="")
    content_type: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)

    article: Mapped[Article] = relationship(back_populates="attachments")


class Event(Base):
    """History: what happened to a ticket, or to a message that made no ticket.

    kind is one of: created, follow-up, reopened, rejected, linked, state-changed,
    queue-changed, priority-changed, routed, ignored, duplicate, size-rejected,
    autoresponse-sent, autoresponse-suppressed, bounce, outbox-failed, ...
    """

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    article_id: Mapped[int | None] = mapped_column(ForeignKey("articles.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How many times it happened: size-rejected events count one sender's refusals per
    # hour in one row (gateway/intake/size_events.py); every other kind is 1.
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    ticket: Mapped[Ticket | None] = relationship(back_populates="events", foreign_keys=[ticket_id])

    __table_args__ = (
        Index("ix_events_kind_created", "kind", "created_at"),
        Index("ix_events_ticket", "ticket_id"),
    )


class Participant(Base):
    """Who takes part in a ticket: whose follow-ups by ticket number are threaded.

    `address` is the mailbox as compared (gateway/intake/participants.py: lower case,
    no +tag); `source` says how it got here: customer, reply-to, to, cc, from (a reply by
    proof), admin.
    """

    __tablename__ = "participants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    address: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(16), default="customer")
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("ticket_id", "address", name="uq_participants"),)


class HeldMessage(Base):
    """A stranger's follow-up by number kept out of the ticket (stranger_follow_up = "hold")
    until an admin releases it onto a ticket or discards it (`ticketgate held`)."""

    __tablename__ = "held_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The ticket the message named by number.
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    message_id: Mapped[str] = mapped_column(String(998))
    content_hash: Mapped[str] = mapped_column(String(64))
    from_address: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # "" for the null sender <>, NULL when not known (as gateway.mail.envelope.Envelope).
    envelope_sender: Mapped[str | None] = mapped_column(String(320), nullable=True)
    envelope_recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="held")  # held|released|discarded
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("message_id", "content_hash", name="uq_held_message"),
        Index("ix_held_state", "state"),
    )


class Counter(Base):
    """Ticket number counters, one row per scope (a day, or "global")."""

    __tablename__ = "counters"
    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class OutboxMessage(Base):
    """Outgoing mail written in the same transaction as the ticket (transactional outbox).

    An answer's only row in the intake transaction: its outgoing article and its
    `autoresponse-sent` event are written when the smarthost has accepted it
    (autoresponse/outbox.py). Until then `message_id` here is what threads a reply.
    """

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    article_id: Mapped[int | None] = mapped_column(ForeignKey("articles.id"), nullable=True)
    # auto-reply | follow-up | reject | new-ticket-rejected | agent-notification
    kind: Mapped[str] = mapped_column(String(40))
    mail_from: Mapped[str] = mapped_column(String(320), default="")
    rcpt_to: Mapped[str] = mapped_column(String(320))
    # rcpt_to's domain, lower-case: the hourly limit per domain (autoresponse/limits.py).
    rcpt_domain: Mapped[str] = mapped_column(String(255), default="", server_default="")
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    message: Mapped[bytes] = mapped_column(LargeBinary)
    # The text template it was rendered from, for the event written when it is sent.
    template: Mapped[str] = mapped_column(String(200), default="", server_default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sending|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
        Index("ix_outbox_rcpt_created", "rcpt_to", "created_at"),
        # The site's and each domain's answers of the last hour (autoresponse/limits.py).
        Index("ix_outbox_created", "created_at"),
        Index("ix_outbox_domain_created", "rcpt_domain", "created_at"),
    )


class Rollup(Base):
    """Running counts per hour / month, kept by triggers (see ticketstore/rollups.py)."""

    __tablename__ = "rollups"
    series: Mapped[str] = mapped_column(String(40), primary_key=True)
    # 'YYYY-MM-DD HH' (UTC hour), 'YYYY-MM' (month) or '' (all time).
    bucket: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The writing connection on PostgreSQL (its backend pid), 0 on SQLite.
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class AnswerCount(Base):
    """Customer answers planned per mailbox and UTC day: the exact daily limit.

    One row per (normalised mailbox, day), raised by an atomic conditional upsert inside
    the intake transaction (autoresponse/limits.py), so concurrent writers on any number
    of gateways never pass `max_per_day` together. Rows of past days are pruned.
    """

    __tablename__ = "answer_counts"
    mailbox: Mapped[str] = mapped_column(String(320), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    answers: Mapped[int] = mapped_column(Integer, default=0)

