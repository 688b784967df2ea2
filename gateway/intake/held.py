"""Held messages: a stranger's follow-up kept out of the ticket it named
(`stranger_follow_up = "hold"`) until an admin releases or discards it (`ticketgate held`).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, bindparam, insert, select

from ticketstore.models import HeldMessage

from .prepared import Prepared

_H = HeldMessage.__table__
_INSERT = insert(_H).returning(_H.c.id)
_FIND = select(_H.c.id).where(_H.c.message_id == bindparam("message_id"),
                              _H.c.content_hash == bindparam("content_hash"))


def find_held(conn: Connection, message_id: str, content_hash: str) -> int | None:
    """The id of this message when it was held before (the MTA retrying it)."""
    return conn.execute(_FIND, {"message_id": message_id,
                                "content_hash": content_hash}).scalar_one_or_none()


def insert_held(conn: Connection, p: Prepared, ticket_id: int, now: dt.datetime) -> int:
    return int(conn.execute(_INSERT, {
        "ticket_id": ticket_id, "message_id": p.message_id, "content_hash": p.content_hash,
        "from_address": p.msg.from_address, "subject": p.msg.subject, "raw": p.raw,
        "envelope_sender": p.envelope.mail_from,
        "envelope_recipients": list(p.envelope.rcpt_tos), "state": "held",
        "created_at": now,
    }).scalar_one())
