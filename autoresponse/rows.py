"""The row an answer writes in the intake transaction (its outbox entry), prebuilt.

The same row as the generic `insert_outbox` of ticketstore.statements, cheaper per
answer: values that are always the same for an answer (a pending entry that was never
tried) are written into the SQL instead of being bound and converted on every call. (The
answer's one timestamp, bound twice, is converted once by UTCDateTime's own memory.)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, bindparam, insert, literal_column, null
from sqlalchemy.sql import ClauseElement

from ticketstore.models import OutboxMessage
from ticketstore.statements import STATEMENTS


def _insert(table: Table, constants: dict[str, ClauseElement]) -> ClauseElement:
    """INSERT of every column but the id, the constants inline."""
    values: dict[str, Any] = {}
    for col in table.columns:
        if col.key == "id":
            continue
        values[col.key] = constants[col.key] if col.key in constants else bindparam(col.key)
    return insert(table).values(values)


OUTBOX = STATEMENTS.define("autoresponse/insert_outbox", lambda _d: _insert(
    OutboxMessage.__table__, {"state": literal_column("'pending'"),
                              "attempts": literal_column("0"),
                              "last_error": literal_column("''"), "sent_at": null()}))
