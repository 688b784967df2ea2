"""Ticket number generators compatible with the OTRS/Znuny schemes.

- date-checksum: YYYYMMDD + system id + counter (zero-padded) + one check digit
- date:          YYYYMMDD + system id + counter (zero-padded)
- autoincrement: system id + counter (zero-padded)

Date schemes count per day, autoincrement globally. The counter lives in the database
and is incremented inside the caller's transaction with one atomic UPDATE, so two
processes creating tickets at the same moment never get the same number.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from sqlalchemy import Connection, bindparam

from .db import dialect_insert
from .models import Counter

COUNTERS = Counter.__table__


def check_digit(digits: str) -> int:
    """Weights 1,2,1,2,... over the digits; the digit that brings the sum to a multiple of 10.

    A sum already divisible by 10 gives 1, not 0, as in the OTRS DateChecksum scheme.
    """
    total = sum(int(d) * (1 if i % 2 == 0 else 2) for i, d in enumerate(digits))
    digit = 10 - total % 10
    return 1 if digit == 10 else digit


def format_number(
    generator: str, system_id: str, counter: int, day: dt.date, min_size: int = 5
) -> str:
    padded = str(counter).zfill(min_size)
    if generator == "autoincrement":
        return f"{system_id}{padded}"
    base = f"{day:%Y%m%d}{system_id}{padded}"
    if generator == "date":
        return base
    if generator == "date-checksum":
        return f"{base}{check_digit(base)}"
    raise ValueError(f"unknown generator {generator!r}")


def is_plausible(generator: str, number: str) -> bool:
    """Could `number` have been made by this generator? Checks the check digit."""
    if not number.isdigit():
        return False
    if generator == "date-checksum":
        return len(number) >= 10 and check_digit(number[:-1]) == int(number[-1])
    return True


def counter_scope(generator: str, day: dt.date) -> str:
    return "global" if generator == "autoincrement" else f"{day:%Y%m%d}"


def next_counter(conn: Connection, scope: str) -> int:
    """Atomically increment and return the counter for `scope` in this transaction.

    One upsert statement (`INSERT .. ON CONFLICT DO UPDATE .. RETURNING`, SQLite 3.35+
    and PostgreSQL): the row lock it takes serialises concurrent writers.
    """
    return int(conn.execute(_increment(conn.dialect.name), {"scope": scope}).scalar_one())


@functools.cache
def _increment(dialect_name: str) -> Any:
    """The upsert of `next_counter`, one statement object per dialect (see
    gateway/intake/store.py on why statements are built once)."""
    return (dialect_insert(dialect_name)(COUNTERS).values(scope=bindparam("scope"), value=1)
            .on_conflict_do_update(index_elements=[COUNTERS.c.scope],
                                   set_={"value": COUNTERS.c.value + 1})
            .returning(COUNTERS.c.value))


def new_ticket_number(
    conn: Connection, generator: str, system_id: str, now: dt.datetime, min_size: int = 5
) -> str:
    day = now.date()
    value = next_counter(conn, counter_scope(generator, day))
    return format_number(generator, system_id, value, day, min_size)
