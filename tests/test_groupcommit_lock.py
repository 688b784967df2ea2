"""Group commit under the cross-process writer lock (worker processes on SQLite), with
real threads, a real `flock` and the real intake.

Another worker process's commit holds the lock; meanwhile our writer waits, and what
queues behind it joins its batch. Nothing may be left holding the lock.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.server.groupcommit import GroupCommitter
from ticketstore.writelock import WriterLock

ENV = Envelope("c@customer.example", ("support@helpdesk.example",))


def _mail(n: int) -> bytes:
    return (f"From: c{n}@customer.example\r\nTo: support@helpdesk.example\r\n"
            f"Subject: hello {n}\r\nMessage-ID: <lock-{n}@customer.example>\r\n\r\nbody\r\n"
            ).encode()


def _writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("group-commit")}


class _Announced(WriterLock):
    """Says when the writer starts waiting for the lock."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.waiting = threading.Event()

    def acquire(self) -> None:
        self.waiting.set()
        super().acquire()


def test_what_queues_while_another_process_commits_joins_one_batch(
    intake: Intake, tmp_path: Path,
) -> None:
    path = tmp_path / "tg.db-writer.lock"
    other, ours = WriterLock(path), _Announced(path)
    committer = GroupCommitter(intake.engine, lock=ours)
    prepared = [intake.prepare(_mail(i), ENV) for i in range(4)]
    with other:
        committer.start()
        futures = [committer.submit(intake, prepared[0])]
        assert ours.waiting.wait(10)
        futures += [committer.submit(intake, p) for p in prepared[1:]]
        time.sleep(0.05)
        assert not any(f.done() for f in futures), "nothing stored while another holds it"
    assert [f.result(30).outcome for f in futures] == [Outcome.CREATED] * 4
    committer.stop()
    assert committer.batches == 1 and committer.largest_batch == 4
    assert other.try_acquire(), "the writer let go"
    other.release()
    other.close()
    ours.close()


def test_a_stop_while_waiting_for_the_lock_stores_everything_and_lets_go(
    intake: Intake, tmp_path: Path,
) -> None:
    threads = _writer_threads()
    path = tmp_path / "tg.db-writer.lock"
    other, ours = WriterLock(path), WriterLock(path)
    committer = GroupCommitter(intake.engine, max_batch=2, lock=ours)
    prepared = [intake.prepare(_mail(i), ENV) for i in range(5)]
    with other:
        committer.start()
        futures = [committer.submit(intake, p) for p in prepared]
        stopping = threading.Thread(target=committer.stop)
        stopping.start()
        time.sleep(0.1)
        assert committer.alive and not any(f.done() for f in futures)
    stopping.join(30)
    assert [f.result(1).outcome for f in futures] == [Outcome.CREATED] * 5
    assert committer.batches == 3 and committer.largest_batch == 2
    assert not committer.alive and _writer_threads() <= threads
    assert other.try_acquire()
    other.release()
    other.close()
    ours.close()


class _Unlockable(WriterLock):
    """Waiting for the lock fails once (say, EINTR)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail = True

    def acquire(self) -> None:
        if self.fail:
            self.fail = False
            raise InterruptedError("interrupted")
        super().acquire()


def test_a_lock_that_cannot_be_taken_fails_that_batch_alone(
    intake: Intake, tmp_path: Path,
) -> None:
    lock = _Unlockable(tmp_path / "tg.db-writer.lock")
    committer = GroupCommitter(intake.engine, lock=lock)
    committer.start()
    failed = committer.submit(intake, intake.prepare(_mail(0), ENV))
    assert isinstance(failed.exception(30), InterruptedError), "not stored without the lock"
    ok = committer.submit(intake, intake.prepare(_mail(1), ENV)).result(30)
    committer.stop()
    assert ok.outcome is Outcome.CREATED
    probe = WriterLock(lock.path)
    assert probe.try_acquire()
    probe.release()
    probe.close()
    lock.close()
