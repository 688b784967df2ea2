"""Group commit: one writer thread stores whatever messages are ready in ONE transaction.

Sessions on several connections finish DATA at about the same time; instead of one
transaction (and one fsync) each, the writer takes every parsed message waiting and
stores the batch together (`store_in_batch`: a SAVEPOINT per message, so one failing
message does not take the others down; a message alone is stored as the pipe stores
it, `store_alone`). Each submitter's future resolves only after
the batch's COMMIT has returned: the 250 is still sent strictly after the message is
durable.

With worker processes on SQLite the writers take turns through a cross-process lock,
held from BEGIN to COMMIT; what arrives while the writer waits for it joins the batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from gateway.intake.core import Intake, Prepared
from gateway.intake.outcome import Disposition
from gateway.intake.transaction import (
    RetryAlone,
    Touches,
    is_conflict,
    store_alone,
    store_in_batch,
    touch_tickets,
)

log = logging.getLogger("ticketgate.groupcommit")


@dataclass(eq=False)
class _Job:
    intake: Intake
    prepared: Prepared
    future: concurrent.futures.Future[Disposition]


@dataclass(eq=False)
class _Call:
    """Another write (a size refusal's event): its own transaction, under the same lock."""

    write: Callable[[Connection], None]
    future: concurrent.futures.Future[None]


class GroupCommitter:
    """Owns the only thread that writes intake results in the daemon."""

    def __init__(self, engine: Engine, max_batch: int = 64,
                 lock: AbstractContextManager[object] | None = None) -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        # The other worker processes' writers wait on it (ticketstore/writelock.py)
        # instead of in SQLite's sleeping busy handler.
        self.lock: AbstractContextManager[object] = lock or nullcontext()
        self._queue: queue.SimpleQueue[_Job | _Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        # Observability (and the tests): how many batches, of what size.
        self.batches = 0
        self.largest_batch = 0
        self.messages = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, intake: Intake, prepared: Prepared) -> concurrent.futures.Future[Disposition]:
        future: concurrent.futures.Future[Disposition] = concurrent.futures.Future()
        self._queue.put(_Job(intake, prepared, future))
        return future

    def call(self, write: Callable[[Connection], None]) -> concurrent.futures.Future[None]:
        """Run `write(conn)` in a transaction of its own on the writer thread."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(_Call(write, future))
        return future

    async def store(self, intake: Intake, prepared: Prepared) -> Disposition:
        """Store and commit `prepared`; returns once it is durable (raises otherwise)."""
        return await asyncio.wrap_future(self.submit(intake, prepared))

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every queued message, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch: list[_Job | _Call] = [first]
            try:
                with self.lock:
                    # What queued meanwhile (another process's commit, our own parse)
                    # shares this transaction and its fsync.
                    while len(batch) < self.max_batch:
                        try:
                            job = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if job is None:
                            stopping = True
                            break
                        batch.append(job)
                    self._commit(batch)
            except BaseException as exc:  # never leave a submitter waiting forever
                log.exception("group commit failed unexpectedly")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _commit(self, batch: list[_Job | _Call]) -> None:
        """Store `batch` in one transaction; settle each job's future after COMMIT."""
        for call in batch:
            if isinstance(call, _Call) and call.future.set_running_or_notify_cancel():
                try:
                    with self.engine.begin() as conn:
                        call.write(conn)
                except Exception as exc:
                    call.future.set_exception(exc)
                else:
                    call.future.set_result(None)
        jobs = [job for job in batch
                if isinstance(job, _Job) and job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        self.batches += 1
        self.messages += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        if len(jobs) == 1:  # the transaction is the message's: no savepoint needed
            self._store_alone(jobs[0])
            return
        results: dict[_Job, Disposition] = {}
        errors: dict[_Job, Exception] = {}
        retry: list[_Job] = []
        try:
            with self.engine.begin() as conn:
                touches = Touches()
                for job in jobs:
                    _still_in_transaction(conn)
                    try:
                        results[job] = store_in_batch(conn, job.intake, job.prepared, touches)
                    except RetryAlone:
                        retry.append(job)
                    except Exception as exc:
                        errors[job] = exc
                _still_in_transaction(conn)
                # The follow-ups' ticket rows, locked only from here to COMMIT, in id order.
                touch_tickets(conn, touches)
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of this batch is durable
            if is_conflict(exc):  # lost to a concurrent writer: each message alone, again
                for job in jobs:
                    self._store_alone(job)
                return
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, disposition in results.items():
            job.future.set_result(disposition)
        for job, error in errors.items():
            job.future.set_exception(error)
        for job in retry:  # lost a unique-constraint race or a deadlock to another writer
            self._store_alone(job)

    def _store_alone(self, job: _Job) -> None:
        try:
            job.future.set_result(store_alone(self.engine, job.intake, job.prepared))
        except Exception as exc:
            job.future.set_exception(exc)


def _still_in_transaction(conn: Connection) -> None:
    """Fail the batch if the database ended our transaction on its own.

    SQLite rolls a whole transaction back after some errors (disk full, I/O error,
    out of memory). The next message's SAVEPOINT would then quietly start a new
    transaction, and a COMMIT with none open succeeds: earlier messages would be
    acknowledged without being stored. (PostgreSQL instead refuses every statement
    until the rollback, which the savepoints handle.) A lost connection fails the
    batch the same way, as a transient error.
    """
    if conn.invalidated:  # the connection was lost (a database restart): so is the batch
        raise sa_exc.OperationalError(
            "COMMIT", None, RuntimeError("the connection to the database was lost"))
    if not getattr(conn.connection.dbapi_connection, "in_transaction", True):
        raise sa_exc.OperationalError(
            "COMMIT", None, RuntimeError("the database rolled the transaction back on its own"))
