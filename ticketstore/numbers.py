"""Ticket number generators compatible with the OTRS/Znuny schemes.

- date-checksum: YYYYMMDD + system id + counter (zero-padded) + one check digit
- date:          YYYYMMDD + system id + counter (zero-padded)
- autoincrement: system id + counter (zero-padded)

Date schemes count per day, autoincrement globally. The counter lives in the database
(one row per day, or one `global` row) and holds the highest counter handed out.

On PostgreSQL several writers (worker processes, gateways on other MX hosts) create
tickets at once. A counter incremented inside the intake transaction would stay locked
until that transaction's COMMIT and make every new-ticket batch of every writer wait
for the one before. Instead each process claims a block of counters in a short
transaction of its own (one atomic upsert, committed at once) and hands them out from
memory (the first block of a process is one counter, then 2, 4, ... up to BLOCK).
Numbers stay unique; what they give up (documented in docs/scale-out.md):
- gaps: the unused rest of a block is lost when the process stops or the day ends,
  and so is a number whose ticket was rolled back;
- order: tickets of two processes interleave (10..19 and 20..29 in use at once).
On SQLite one writer holds the whole database from BEGIN to COMMIT anyway: the counter
is incremented by one in the caller's transaction, without gaps.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import weakref
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text

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


# The most counters a PostgreSQL process claims at a time. Its first claim of a scope is
# one counter, each next one twice the last, up to BLOCK: a `ticketgate pipe` process
# (one ticket) wastes none, a busy daemon claims once per BLOCK new tickets, and at most
# BLOCK - 1 unused counters are lost per process and day.
BLOCK = 16


class _Blocks:
    """The counters a process has claimed and not handed out yet, per engine and scope."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # engine -> scope -> (next counter, last counter of the block, size of the block)
        self._left: weakref.WeakKeyDictionary[Engine, dict[str, tuple[int, int, int]]] = (
            weakref.WeakKeyDictionary())

    def take(self, engine: Engine, scope: str) -> int:
        with self._lock:  # the daemon writes from one thread, but the CLI or a test may not
            blocks = self._left.setdefault(engine, {})
            nxt, last, size = blocks.get(scope, (1, 0, 0))
            if nxt > last:
                size = min(BLOCK, max(1, 2 * size))
                last = claim_block(engine, scope, size)
                nxt = last - size + 1
            blocks[scope] = (nxt + 1, last, size)
            return nxt


_BLOCKS = _Blocks()


def claim_block(engine: Engine, scope: str, size: int) -> int:
    """Add `size` to the counter of `scope` in a transaction of its own; the new value
    (the last counter of the claimed block).

    Its COMMIT need not wait for the disk (synchronous_commit off): any ticket that uses
    one of these numbers commits later, and PostgreSQL's WAL is flushed in order, so a
    claim is durable before any ticket numbered from it is.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
        return int(conn.execute(_increment(conn.dialect.name),
                                {"scope": scope, "size": size}).scalar_one())


def next_counter(conn: Connection, scope: str) -> int:
    """The next counter of `scope`: from this process's block on PostgreSQL (claimed
    apart from `conn`'s transaction), incremented in `conn`'s transaction on SQLite."""
    if conn.dialect.name == "sqlite":
        return int(conn.execute(_increment("sqlite"), {"scope": scope, "size": 1})
                   .scalar_one())
    return _BLOCKS.take(conn.engine, scope)


@functools.cache
def _increment(dialect_name: str) -> Any:
    """The upsert adding `size` to a counter, one statement object per dialect (see
    gateway/intake/store.py on why statements are built once)."""
    size = bindparam("size")
    return (dialect_insert(dialect_name)(COUNTERS).values(scope=bindparam("scope"), value=size)
            .on_conflict_do_update(index_elements=[COUNTERS.c.scope],
                                   set_={"value": COUNTERS.c.value + size})
            .returning(COUNTERS.c.value))


def new_ticket_number(
    conn: Connection, generator: str, system_id: str, now: dt.datetime, min_size: int = 5
) -> str:
    day = now.date()
    value = next_counter(conn, counter_scope(generator, day))
    return format_number(generator, system_id, value, day, min_size)
