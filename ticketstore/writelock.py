"""One writer at a time across intake worker processes, for SQLite.

SQLite lets one transaction write at a time. A writer that finds the database locked
waits in SQLite's busy handler, which sleeps 1, 2, 5, 10... ms between attempts: with
several worker processes committing every few hundred microseconds, those sleeps
would cost more than the work. An exclusive `flock` on a file beside the database
queues the writers in the kernel instead, which wakes the next one as soon as the
lock is released. Writers without it (`ticketgate pipe`, the CLI) still take SQLite's
own lock, so correctness never depends on this file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine


class WriterLock:
    """A reusable exclusive lock on `path` (blocking with `with`).

    The lock belongs to the open file, not to a thread: one thread may wait for it
    (`acquire`) while another goes on working, and either may `release` it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # releases the GIL while it waits

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it: the common case needs no waiting thread."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def writer_lock_for(engine: Engine) -> WriterLock | None:
    """The lock for a file-based SQLite database; None for other databases."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return WriterLock(Path(f"{url.database}-writer.lock"))
