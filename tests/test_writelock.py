"""The writer lock's non-blocking attempt, and why one thread may wait for it while
another releases it (group commit relies on both)."""

from __future__ import annotations

import threading
from pathlib import Path

from ticketstore.writelock import WriterLock


def test_try_acquire_fails_while_another_open_file_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "db-writer.lock"
    ours, theirs = WriterLock(path), WriterLock(path)
    with theirs:
        assert not ours.try_acquire()
    assert ours.try_acquire()
    assert not theirs.try_acquire()
    ours.release()
    assert theirs.try_acquire()
    theirs.release()
    ours.close()
    theirs.close()


def test_the_lock_belongs_to_the_open_file_not_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "db-writer.lock"
    lock, probe = WriterLock(path), WriterLock(path)
    waiter = threading.Thread(target=lock.acquire)
    waiter.start()
    waiter.join(10)
    assert not probe.try_acquire()  # still held after the thread that took it has ended
    lock.release()  # by another thread
    assert probe.try_acquire()
    probe.release()
    lock.close()
    probe.close()
