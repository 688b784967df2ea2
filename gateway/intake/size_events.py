"""`size-rejected` events, counted: one row per envelope sender per hour.

Anyone who can connect may repeat `MAIL FROM:<> SIZE=999999999999` as fast as the
replies come; one row per refusal would let them fill the events table. A refusal
instead adds to its sender's row of the current hour (`Event.occurrences`), which keeps
the largest size and the first recipients seen. The first refusal's row looks as it
always did; later ones add `last_at`. A sender that changes its address every time
would still make a row each: past `SENDERS_PER_HOUR` senders in an hour, the others'
refusals are counted together in one row whose `mail_from` is `OTHER_SENDERS`.

Runs on the caller's connection, inside its transaction (the daemon's writer, under
the writers' lock; the pipe's own transaction).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from ticketstore.models import Event

KIND = "size-rejected"
RCPT_KEPT = 20  # recipients kept per row: a flood may name a new one every time
SENDERS_PER_HOUR = 100  # rows of their own per hour; the other senders share one
OTHER_SENDERS = "(other senders)"  # not an address: nobody can send as it
_E = Event.__table__


@dataclass
class SizeRejection:
    """Refusals of one sender, merged before they are written."""

    mail_from: str
    size: int
    limit: int
    rcpt_to: list[str] = field(default_factory=list)
    count: int = 1

    def merge(self, other: SizeRejection) -> None:
        self.count += other.count
        self.size = max(self.size, other.size)
        self.limit = other.limit
        self.rcpt_to = _union(self.rcpt_to, other.rcpt_to)


def _union(first: list[str], more: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*first, *more]))[:RCPT_KEPT]


def window_start(now: dt.datetime) -> dt.datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def record_size_rejections(conn: Connection, rejections: Iterable[SizeRejection],
                           now: dt.datetime) -> None:
    """Add each sender's refusals to its row of this hour, or start that row."""
    since = window_start(now)
    for r in rejections:
        sender = r.mail_from
        row = _row_of(conn, since, sender)
        if row is None and conn.execute(
                select(func.count()).where(_E.c.kind == KIND, _E.c.created_at >= since,
                                           _E.c.ticket_id.is_(None))
        ).scalar_one() >= SENDERS_PER_HOUR:
            sender = OTHER_SENDERS
            row = _row_of(conn, since, sender)
        if row is None:
            conn.execute(insert(_E).values(
                kind=KIND, created_at=now, occurrences=r.count,
                detail={"size": r.size, "limit": r.limit, "mail_from": sender,
                        "rcpt_to": r.rcpt_to[:RCPT_KEPT]}))
            continue
        detail = dict(row.detail)
        detail.update(size=max(int(detail.get("size") or 0), r.size), limit=r.limit,
                      rcpt_to=_union(detail.get("rcpt_to") or [], r.rcpt_to),
                      last_at=now.isoformat())
        conn.execute(update(_E).where(_E.c.id == row.id)
                     .values(occurrences=row.occurrences + r.count, detail=detail))


def _row_of(conn: Connection, since: dt.datetime, mail_from: str) -> Row[Any] | None:
    """`mail_from`'s row of the hour that began at `since`."""
    return conn.execute(
        select(_E.c.id, _E.c.occurrences, _E.c.detail)
        .where(_E.c.kind == KIND, _E.c.created_at >= since, _E.c.ticket_id.is_(None),
               _E.c.detail["mail_from"].as_string() == mail_from)
        .order_by(_E.c.id.desc()).limit(1)
    ).first()
