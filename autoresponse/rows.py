"""The row an answer writes in the intake transaction (its outbox entry), prebuilt.

The same row as the generic `insert_outbox` of ticketstore.statements, cheaper per
answer: values that are always the same for an answer (a pending entry that was never
tried) are written into the SQL instead of being bound and converted on every call, and
the answer's one timestamp, bound twice, is converted to the driver's form once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, bindparam, insert, literal_column, null
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from ticketstore.models import OutboxMessage, UTCDateTime
from ticketstore.statements import STATEMENTS

# (value, dialect, converted) of the last timestamp bound through `_Instant`.
_last: tuple[Any, Any, Any] = (None, None, None)


class _Instant(UTCDateTime):
    """UTCDateTime that reuses its conversion while the same datetime object is bound again.

    An answer binds `stored.now` twice (created and due) and each
    conversion (to UTC, then to the driver's form: a string on SQLite) costs a few µs.
    The check is identity, and the slot keeps a reference to the object, so a different
    datetime is always converted; the slot is replaced as one tuple (thread-safe).
    """

    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        convert = super().bind_processor(dialect)

        def process(value: Any) -> Any:
            global _last
            hit = _last
            if hit[0] is value and hit[1] is dialect:
                return hit[2]
            out = convert(value) if convert is not None else value
            _last = (value, dialect, out)
            return out

        return process


def _insert(table: Table, constants: dict[str, ClauseElement]) -> ClauseElement:
    """INSERT of every column but the id: constants inline, timestamps as `_Instant`."""
    values: dict[str, Any] = {}
    for col in table.columns:
        if col.key == "id":
            continue
        if col.key in constants:
            values[col.key] = constants[col.key]
        elif isinstance(col.type, UTCDateTime):
            values[col.key] = bindparam(col.key, type_=_Instant())
        else:
            values[col.key] = bindparam(col.key)
    return insert(table).values(values)


OUTBOX = STATEMENTS.define("autoresponse/insert_outbox", lambda _d: _insert(
    OutboxMessage.__table__, {"state": literal_column("'pending'"),
                              "attempts": literal_column("0"),
                              "last_error": literal_column("''"), "sent_at": null()}))
