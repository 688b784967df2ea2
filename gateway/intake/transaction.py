"""How messages are written: the one transaction and retry policy every entry point uses.

The pipe stores one message per transaction (`store_alone`); the server's group commit
stores a batch in one transaction with a SAVEPOINT per message (`store_in_batch`). In
both, a unique-constraint race with a concurrent writer (another gateway, a pipe
process storing the same message or taking the same ticket number) is not an error:
the message is stored again alone, where it then shows up as a duplicate.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from .outcome import Disposition
from .prepared import Prepared


class Stores(Protocol):
    """What is stored with: `gateway.intake.core.Intake`."""

    def store(self, conn: Connection, p: Prepared) -> Disposition: ...


class RetryAlone(Exception):
    """The message lost a unique-constraint race inside a batch: store it alone after."""


def store_alone(engine: Engine, intake: Stores, prepared: Prepared) -> Disposition:
    """Store one message in its own transaction, retrying a lost race once."""
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                return intake.store(conn, prepared)
        except sa_exc.IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def store_in_batch(conn: Connection, intake: Stores, prepared: Prepared,
                   savepoint: bool = True) -> Disposition:
    """Store one message of a batch inside `conn`'s transaction.

    With `savepoint`, a failing message rolls back only itself. A lost unique-constraint
    race raises `RetryAlone`: the caller commits the batch, then calls `store_alone`.
    """
    try:
        with conn.begin_nested() if savepoint else nullcontext():
            return intake.store(conn, prepared)
    except sa_exc.IntegrityError as exc:
        raise RetryAlone() from exc
