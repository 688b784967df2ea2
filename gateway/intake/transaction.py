"""How messages are written: the one transaction and retry policy every entry point uses.

The pipe stores one message per transaction (`store_alone`); the server's group commit
stores a batch in one transaction with a SAVEPOINT per message (`store_in_batch`),
after locking the batch's tickets in id order (`lock_tickets`). Two kinds of failure
caused by a concurrent writer (another gateway, another worker, a pipe process) are not
errors, and the message is stored again alone instead of being answered 451:
- a lost unique-constraint race (the same message, the same ticket number): stored
  again, it then shows up as a duplicate;
- a deadlock or a serialization failure (PostgreSQL chose this transaction to break a
  lock cycle): stored again after a short random pause, a few times.
Only a database that is really unavailable (down, locked past the busy timeout, full)
makes a message fail, and the MTA retries it later.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Protocol

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy import exc as sa_exc

from ticketstore.models import Ticket

from .outcome import Disposition
from .prepared import Prepared

log = logging.getLogger("ticketgate.intake")

# PostgreSQL's SQLSTATEs for "this transaction lost to a concurrent one; run it again":
# serialization_failure and deadlock_detected.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
# Attempts of one message alone with such conflicts, with a random pause before each new
# one of up to CONFLICT_PAUSE * 2^n seconds (n conflicts so far): at most 0.62 s in all.
CONFLICT_ATTEMPTS = 6
CONFLICT_PAUSE = 0.01

_T = Ticket.__table__
# FOR NO KEY UPDATE: the lock `UPDATE tickets SET updated_at ...` takes anyway; it does
# not block the FOR KEY SHARE that inserting an article referencing the ticket takes.
_LOCK_TICKETS = (select(_T.c.id).where(_T.c.id.in_(bindparam("ids", expanding=True)))
                 .order_by(_T.c.id).with_for_update(key_share=True))


class Stores(Protocol):
    """What is stored with: `gateway.intake.core.Intake`."""

    def store(self, conn: Connection, p: Prepared) -> Disposition: ...

    def tickets_of(self, conn: Connection, p: Prepared) -> set[int]: ...


class RetryAlone(Exception):
    """The message lost a race inside a batch: store it alone after the batch."""


def is_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure: running the transaction again will do."""
    orig = getattr(exc, "orig", None)
    return (isinstance(exc, sa_exc.DBAPIError) and not exc.connection_invalidated
            and getattr(orig, "sqlstate", None) in CONFLICT_SQLSTATES)


def store_alone(engine: Engine, intake: Stores, prepared: Prepared) -> Disposition:
    """Store one message in its own transaction, running it again after a lost race
    (once for a unique constraint, up to CONFLICT_ATTEMPTS times for a deadlock)."""
    lost_unique, conflicts = False, 0
    while True:
        try:
            with engine.begin() as conn:
                return intake.store(conn, prepared)
        except sa_exc.IntegrityError:
            if lost_unique:
                raise
            lost_unique = True
        except sa_exc.DBAPIError as exc:
            conflicts += 1
            if not is_conflict(exc) or conflicts == CONFLICT_ATTEMPTS:
                raise
            log.info("intake: %s, storing the message again (attempt %d)",
                     "deadlock" if exc.orig.sqlstate == "40P01" else "serialization failure",
                     conflicts + 1)
            time.sleep(random.uniform(0, CONFLICT_PAUSE * 2 ** conflicts))


def store_in_batch(conn: Connection, intake: Stores, prepared: Prepared,
                   savepoint: bool = True) -> Disposition:
    """Store one message of a batch inside `conn`'s transaction.

    With `savepoint`, a failing message rolls back only itself. A lost race (unique
    constraint, deadlock) raises `RetryAlone`: the caller commits the batch, then calls
    `store_alone`.
    """
    try:
        with conn.begin_nested() if savepoint else nullcontext():
            return intake.store(conn, prepared)
    except sa_exc.IntegrityError as exc:
        raise RetryAlone() from exc
    except sa_exc.DBAPIError as exc:
        if is_conflict(exc):
            raise RetryAlone() from exc
        raise


def lock_tickets(conn: Connection, pairs: Iterable[tuple[Stores, Prepared]]) -> None:
    """Lock the tickets a batch's messages follow up, in id order, before writing.

    Two writers whose batches update the same tickets in arrival order (1 then 2, 2 then
    1) deadlock; taking every batch's locks in one order makes that cycle impossible. A
    message whose ticket changes in between (a new ticket with its thread key meanwhile)
    takes its lock later, and a deadlock then is retried like any other. SQLite locks
    the whole database per writer: nothing to order there.
    """
    if conn.dialect.name != "postgresql":
        return
    try:
        # In a savepoint: a conflict (or a message whose lookup fails: it fails again,
        # alone, when it is stored) costs only these early locks, never the batch.
        with conn.begin_nested():
            ids = {i for intake, p in pairs for i in intake.tickets_of(conn, p)}
            if len(ids) > 1:
                conn.execute(_LOCK_TICKETS, {"ids": sorted(ids)}).all()
    except sa_exc.SQLAlchemyError as exc:
        if conn.invalidated:
            raise
        log.debug("intake: tickets not locked ahead: %s", exc)
