"""Refusals for size on their way to the database: merged per sender, one write at a time.

The reply does not wait for the event (the refusal stands regardless), so a client
repeating an oversize `MAIL FROM` gets its 552s as fast as it asks, and what arrives
while the writer is busy is merged in memory: at most one write is queued, under the
writers' lock like every other (the group-commit thread), whatever the rate.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from sqlalchemy import Connection

from gateway.intake.size_events import SizeRejection, record_size_rejections
from ticketstore.models import utcnow

from .groupcommit import GroupCommitter

log = logging.getLogger("ticketgate.server")

MAX_PENDING = 1000  # senders waiting at most; beyond that a refusal is only counted


class SizeRefusals:
    def __init__(self, committer: GroupCommitter) -> None:
        self.committer = committer
        self._lock = threading.Lock()  # add() on the event loop, _write() on the writer
        self._pending: dict[str, SizeRejection] = {}
        self._scheduled = False

    def add(self, refusal: SizeRejection) -> bool:
        """Queue `refusal` for writing; True if it is its sender's first one pending."""
        with self._lock:
            known = self._pending.get(refusal.mail_from)
            if known is not None:
                known.merge(refusal)
            elif len(self._pending) < MAX_PENDING:
                self._pending[refusal.mail_from] = refusal
            if self._scheduled:
                return known is None
            self._scheduled = True
        self.committer.call(self._write).add_done_callback(self._written)
        return known is None

    def _write(self, conn: Connection) -> None:
        with self._lock:
            batch, self._pending = list(self._pending.values()), {}
            self._scheduled = False
        record_size_rejections(conn, batch, utcnow())

    @staticmethod
    def _written(future: concurrent.futures.Future[None]) -> None:
        exc = future.exception()
        if exc is not None:  # best effort: the 552s were answered anyway
            log.warning("could not record size refusals: %s", type(exc).__name__)
