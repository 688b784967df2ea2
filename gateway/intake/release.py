"""Releasing a held message: a stranger's follow-up an admin decided to put on a ticket.

It is stored as the intake would have stored it under `stranger_follow_up = "accept"`:
appended, flagged as a stranger's, nothing of the ticket changed, and the responder told
the sender is not a participant (so no answer reveals anything of the ticket).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import Connection, RowMapping, select, update

from gateway.mail.envelope import Envelope
from ticketstore.models import HeldMessage
from ticketstore.snapshots import SELECT_TICKETS, TICKETS, ticket_snapshot

from .dedupe import find_duplicate
from .outcome import Disposition, Outcome
from .ports import StoredMessage
from .store import event_row, insert_article, insert_events, update_ticket

if TYPE_CHECKING:
    from .core import Intake

_H = HeldMessage.__table__


class ReleaseError(Exception):
    """The held message cannot be released (unknown, already decided, no such ticket)."""


def held_row(conn: Connection, held_id: int) -> RowMapping:
    row = conn.execute(select(_H).where(_H.c.id == held_id)).mappings().first()
    if row is None:
        raise ReleaseError(f"no held message {held_id}")
    if row["state"] != "held":
        raise ReleaseError(f"held message {held_id} was already {row['state']}")
    return row


def release_held(intake: Intake, conn: Connection, held_id: int, number: str | None = None,
                 by: str = "cli") -> Disposition:
    """Store held message `held_id` on ticket `number` (default: the one it named)."""
    row = held_row(conn, held_id)
    where = TICKETS.c.number == number if number else TICKETS.c.id == row["ticket_id"]
    found = conn.execute(SELECT_TICKETS.where(where)).mappings().first()
    if found is None:
        raise ReleaseError(f"no ticket {number}" if number else "its ticket is gone: use --to")
    ticket = ticket_snapshot(found)
    recipients = tuple(row["envelope_recipients"] or ())
    p = intake.prepare(row["raw"], Envelope(row["envelope_sender"], recipients))
    now = intake.clock()
    if find_duplicate(conn, p.message_id, p.content_hash) is not None:
        raise ReleaseError(f"held message {held_id} is already stored on a ticket")
    article = insert_article(conn, p, ticket.id, now, from_stranger=True)
    ticket = update_ticket(conn, ticket, {"updated_at": now})
    insert_events(conn, [
        event_row(ticket.id, article.id, "follow-up", now, {
            "message_id": p.message_id, "queue": ticket.queue.name,
            "from": p.msg.from_address, "recipients": list(p.envelope.rcpt_tos),
            "classification": sorted(p.classification.labels), "threaded_by": "released"}),
        event_row(ticket.id, article.id, "held-released", now, {
            "held_id": held_id, "from": p.msg.from_address, "by": by}),
    ])
    conn.execute(update(_H).where(_H.c.id == held_id).values(state="released", decided_at=now))
    intake.responder.after_store(conn, StoredMessage(
        msg=p.msg, envelope=p.envelope, classification=p.classification, route=p.route,
        ticket=ticket, article=article, outcome=Outcome.FOLLOW_UP, closed_policy=None,
        queue_refused_new=False, now=now, sender_is_participant=False,
    ))
    return Disposition(Outcome.FOLLOW_UP, p.message_id, ticket.number, ticket.queue.name,
                       article.id)


def discard_held(conn: Connection, held_id: int, now: dt.datetime, by: str = "cli",
                 ) -> int | None:
    """Drop a held message's content (its record stays, so a retry stays a duplicate);
    returns the ticket it named, for the history event."""
    row = held_row(conn, held_id)
    conn.execute(update(_H).where(_H.c.id == held_id).values(
        state="discarded", decided_at=now, raw=b""))
    if row["ticket_id"] is not None:
        insert_events(conn, [event_row(row["ticket_id"], None, "held-discarded", now,
                                       {"held_id": held_id, "from": row["from_address"],
                                        "by": by})])
    ticket_id: int | None = row["ticket_id"]
    return ticket_id
