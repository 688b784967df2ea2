"""How messages are written: the one transaction and retry policy every entry point uses.

The pipe stores one message per transaction (`store_alone`); the server's group commit
stores a batch in one transaction with a SAVEPOINT per message (`store_in_batch`).

A follow-up locks its ticket's row (`UPDATE tickets SET updated_at ...`) until COMMIT.
In a batch that lock would be taken at the message and held through the rest of the
batch: writers on other MX hosts or workers replying to the same few tickets (a
monitoring storm) would wait for each other's whole batch, and batches taking the same
rows in arrival order (1 then 2, 2 then 1) deadlock. So a follow-up that changes
nothing of its ticket but `updated_at` leaves that to the batch's end (`Touches`),
where all of them are written in ticket-id order just before COMMIT: the rows are held
only for that moment, and always taken in one order (a message alone does the same).
A follow-up that really changes its ticket (reopens it, a rule's state or tags) writes
it at once.

Two kinds of failure caused by a concurrent writer (another gateway, another worker, a
pipe process) are not errors, and the message is stored again alone instead of being
answered 451:
- a lost unique-constraint race (the same message, the same ticket number): stored
  again, it then shows up as a duplicate;
- a deadlock or a serialization failure (PostgreSQL chose this transaction to break a
  lock cycle): stored again after a short random pause, a few times.
Only a database that is really unavailable (down, locked past the busy timeout, full)
makes a message fail, and the MTA retries it later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import time
from typing import Protocol

from sqlalchemy import Connection, Engine, bindparam, update
from sqlalchemy import exc as sa_exc

from ticketstore.models import Ticket
from ticketstore.snapshots import TicketSnapshot

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
# Never moves `updated_at` back: a concurrent writer may have touched it later meanwhile.
_TOUCH = (update(_T).where(_T.c.id == bindparam("ticket_id"), _T.c.updated_at < bindparam("at"))
          .values(updated_at=bindparam("at")))


class Touches:
    """The tickets a batch's follow-ups touched, written together by `touch_tickets`."""

    def __init__(self) -> None:
        self.latest: dict[int, dt.datetime] = {}

    def touch(self, ticket: TicketSnapshot, now: dt.datetime) -> TicketSnapshot:
        """Remember `ticket` as updated at `now`; the snapshot as it will be stored."""
        self._note(ticket.id, now)
        return dataclasses.replace(ticket, updated_at=now)

    def merge(self, other: Touches) -> None:
        for ticket_id, at in other.latest.items():
            self._note(ticket_id, at)

    def _note(self, ticket_id: int, at: dt.datetime) -> None:
        self.latest[ticket_id] = max(at, self.latest.get(ticket_id, at))


def touch_tickets(conn: Connection, touches: Touches) -> None:
    """Write the batch's touches in ticket-id order (every writer takes the rows in
    one order: no lock cycle among them)."""
    if touches.latest:
        conn.execute(_TOUCH, [{"ticket_id": i, "at": at}
                              for i, at in sorted(touches.latest.items())])


class Stores(Protocol):
    """What is stored with: `gateway.intake.core.Intake`."""

    def store(self, conn: Connection, p: Prepared, touches: Touches) -> Disposition: ...


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
                touches = Touches()
                disposition = intake.store(conn, prepared, touches)
                touch_tickets(conn, touches)
                return disposition
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


def store_in_batch(conn: Connection, intake: Stores, prepared: Prepared, touches: Touches,
                   ) -> Disposition:
    """Store one message of a batch inside `conn`'s transaction; its ticket's touch is
    added to `touches` (written by `touch_tickets` before COMMIT).

    In its SAVEPOINT, a failing message rolls back only itself (and its touch). A lost
    race (unique constraint, deadlock) raises `RetryAlone`: the caller commits the
    batch, then calls `store_alone`.
    """
    mine = Touches()
    try:
        with conn.begin_nested():
            disposition = intake.store(conn, prepared, mine)
    except sa_exc.IntegrityError as exc:
        raise RetryAlone() from exc
    except sa_exc.DBAPIError as exc:
        if is_conflict(exc):
            raise RetryAlone() from exc
        raise
    touches.merge(mine)
    return disposition
