"""Helpers for the participants/stranger tests: a ticket opened by a customer who copies
in a partner, and the follow-ups customers, colleagues and strangers write to it."""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from ticketstore.models import Article, Event, HeldMessage, Participant, Ticket

SUPPORT = "support@helpdesk.example"
OPENING_ID = "opening-1@customer.example"
AGENT = "kai.agent@helpdesk.example"


def opening(subject: str = "CONFIDENTIAL: merger with Initech") -> bytes:
    """Ana opens a ticket and copies in a partner and one of our agents."""
    return (f"From: Ana Ruiz <ana@customer.example>\nTo: {SUPPORT}\n"
            f"Cc: Pat Partner <pat@partner.example>, {AGENT}\n"
            f"Subject: {subject}\nMessage-ID: <{OPENING_ID}>\nMIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n\nPlease keep this quiet.\n").encode()


def reply(sender: str, number: str, body: str = "new bank details: DE00 0000",
          extra: str = "", subject: str | None = None) -> bytes:
    """`Re: [Ticket#N] …` from `sender`, threaded by number only unless `extra` says more."""
    mid = hashlib.sha1(f"{sender}{number}{body}{extra}".encode()).hexdigest()
    subj = subject if subject is not None else f"Re: [Ticket#{number}] merger"
    return (f"From: {sender}\nTo: {SUPPORT}\nSubject: {subj}\n"
            f"Message-ID: <{mid}@sender.example>\n{extra}MIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}\n").encode()


def participants(s: Session | Connection, number: str) -> dict[str, str]:
    rows = s.execute(select(Participant.address, Participant.source).join(
        Ticket, Participant.ticket_id == Ticket.id).where(Ticket.number == number)).all()
    return {r.address: r.source for r in rows}


def ticket_articles(s: Session, number: str) -> list[Article]:
    return list(s.execute(select(Article).join(Ticket).where(Ticket.number == number)
                          .order_by(Article.id)).scalars())


def ticket_events(s: Session, number: str) -> list[Event]:
    return list(s.execute(select(Event).join(Ticket, Event.ticket_id == Ticket.id)
                          .where(Ticket.number == number).order_by(Event.id)).scalars())


def held(s: Session) -> list[HeldMessage]:
    return list(s.execute(select(HeldMessage).order_by(HeldMessage.id)).scalars())
