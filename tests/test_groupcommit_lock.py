"""Group commit under the cross-process writer lock (worker processes on SQLite), with
real threads, a real `flock` and the real intake.

Other worker processes wait while our writer holds the lock, so it must never parse
there: it parses what arrives while it waits for the lock (and that joins the batch),
and a raw message that comes once the lock is held waits for the next batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from gateway.intake.core import Intake, Prepared
from gateway.intake.outcome import Disposition, Outcome
from gateway.mail.envelope import Envelope
from gateway.server.groupcommit import GroupCommitter
from tests.test_server_units import ENV, _mail
from ticketstore.writelock import WriterLock


class _Fatal(BaseException):
    """Escapes the per-message `except Exception` (as a bug in the writer could)."""


class _Probed(Intake):
    """Records, for each message parsed, whether the writer held the lock meanwhile.

    `other` plays another worker process's commit. `probe`, a third open file, takes
    the lock only if nobody holds it; `guard` makes letting go of `other` and probing
    atomic with respect to each other, so `other` is never mistaken for the writer.
    """

    def __init__(self, intake: Intake, path: Path) -> None:
        super().__init__(intake.config, intake.factory)
        self.other, self.probe = WriterLock(path), WriterLock(path)
        self.other_holds = False
        self.guard = threading.Lock()
        self.parsed: list[tuple[str, bool]] = []  # (subject, the writer held the lock)
        self.stored: list[tuple[int, str]] = []  # (batches committed before, subject)
        self.committer: GroupCommitter | None = None

    def hold(self) -> None:
        with self.guard:
            self.other.acquire()
            self.other_holds = True

    def let_go(self) -> None:
        with self.guard:
            self.other.release()
            self.other_holds = False

    def writer_holds(self) -> bool:
        with self.guard:
            if self.other_holds:
                return False  # cannot tell; the tests let go only once nothing parses
            if self.probe.try_acquire():
                self.probe.release()
                return False
            return True

    def prepare(self, raw: bytes, envelope: Envelope) -> Prepared:
        held = self.writer_holds()
        subject = next(line for line in raw.decode().splitlines()
                       if line.startswith("Subject: "))[len("Subject: "):]
        self.parsed.append((subject, held))
        if "fatal" in subject:
            raise _Fatal(subject)
        return super().prepare(raw, envelope)

    def store(self, conn: Connection, p: Prepared) -> Disposition:
        assert self.committer is not None
        self.stored.append((self.committer.batches, str(p.msg.subject)))
        return super().store(conn, p)

    def close(self) -> None:
        self.other.close()
        self.probe.close()


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `check` while the loop runs; False after `timeout` s (the test then says what
    it expected instead of hanging)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("group-commit")]


def _setup(intake: Intake, tmp_path: Path, lock: WriterLock | None = None,
           max_batch: int = 64) -> tuple[_Probed, GroupCommitter, WriterLock]:
    path = tmp_path / "tg.db-writer.lock"
    probed = _Probed(intake, path)
    lock = lock or WriterLock(path)
    committer = probed.committer = GroupCommitter(intake.engine, max_batch, lock=lock)
    return probed, committer, lock


def test_messages_are_parsed_while_the_writer_waits_for_the_lock_never_holding_it(
    intake: Intake, tmp_path: Path,
) -> None:
    """The old writer took the lock, then parsed what had queued meanwhile: every other
    worker process waited for that parsing. (Its batch grew all the same.)"""
    probed, committer, lock = _setup(intake, tmp_path)
    probed.hold()
    committer.start()

    async def deliver() -> tuple[int, list[Disposition]]:
        first = asyncio.ensure_future(committer.prepare_and_store(probed, _mail(0), ENV))
        try:
            assert await _until(lambda: len(probed.parsed) == 1)  # the writer waits now
            later = [asyncio.ensure_future(committer.prepare_and_store(probed, _mail(i), ENV))
                     for i in (1, 2, 3)]
            await _until(lambda: len(probed.parsed) == 4, timeout=2)
            parsed_while_waiting = len(probed.parsed)
        finally:
            probed.let_go()
        return parsed_while_waiting, await asyncio.gather(first, *later)

    parsed_while_waiting, results = asyncio.run(deliver())
    committer.stop()
    assert [r.outcome for r in results] == [Outcome.CREATED] * 4
    assert parsed_while_waiting == 4
    assert probed.parsed == [(f"hello {i}", False) for i in range(4)]
    assert committer.batches == 1 and committer.largest_batch == 4
    probed.close()
    lock.close()


class _Hooked(WriterLock):
    """Calls `hook` once, holding the lock, right after the writer first takes it."""

    def __init__(self, path: Path, hook: Callable[[], None]) -> None:
        super().__init__(path)
        self.hook: Callable[[], None] | None = hook

    def try_acquire(self) -> bool:
        taken = super().try_acquire()
        if taken and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return taken


def test_a_raw_message_that_comes_once_the_lock_is_held_waits_for_the_next_batch(
    intake: Intake, tmp_path: Path,
) -> None:
    """Parsed ones still join the batch; the first raw one and all behind it go to the
    next batch, in the order they came."""
    taken, queued = threading.Event(), threading.Event()

    def hold_the_writer() -> None:
        taken.set()
        queued.wait(10)

    probed, committer, lock = _setup(
        intake, tmp_path, _Hooked(tmp_path / "tg.db-writer.lock", hold_the_writer))
    committer.start()
    ready = {i: intake.prepare(_mail(i), ENV) for i in (1, 3)}

    async def deliver() -> list[Disposition]:
        jobs = [asyncio.ensure_future(committer.prepare_and_store(probed, _mail(0), ENV))]
        assert await asyncio.to_thread(taken.wait, 10)
        jobs += [asyncio.ensure_future(committer.store(probed, ready[1])),
                 asyncio.ensure_future(committer.prepare_and_store(probed, _mail(2), ENV)),
                 asyncio.ensure_future(committer.store(probed, ready[3]))]
        await asyncio.sleep(0)  # each has queued its message
        queued.set()
        return await asyncio.gather(*jobs)

    results = asyncio.run(deliver())
    committer.stop()
    assert [r.outcome for r in results] == [Outcome.CREATED] * 4
    assert [r.ticket_number for r in results] == sorted(r.ticket_number for r in results)
    assert probed.stored == [(0, "hello 0"), (0, "hello 1"), (1, "hello 2"), (1, "hello 3")]
    assert probed.parsed == [("hello 0", False), ("hello 2", False)]
    probed.close()
    lock.close()


def test_a_stop_while_waiting_for_the_lock_stores_everything_and_lets_go(
    intake: Intake, tmp_path: Path,
) -> None:
    """With a full batch waiting and more behind it: all of it is stored, in batches of
    the limit, before the writer stops; no lock is left held and no thread running."""
    threads = set(_writer_threads())
    probed, committer, lock = _setup(intake, tmp_path, max_batch=2)
    probed.hold()
    committer.start()

    async def deliver() -> tuple[bool, list[Disposition]]:
        jobs = [asyncio.ensure_future(committer.prepare_and_store(probed, _mail(i), ENV))
                for i in range(5)]
        stopping = asyncio.ensure_future(asyncio.to_thread(committer.stop))
        try:
            assert await _until(lambda: len(probed.parsed) == 2)  # a full batch waits
            await asyncio.sleep(0.2)
            waiting = committer.alive and not any(j.done() for j in [*jobs, stopping])
        finally:
            probed.let_go()
        await stopping
        return waiting, await asyncio.gather(*jobs)

    waiting, results = asyncio.run(deliver())
    assert waiting
    assert [r.outcome for r in results] == [Outcome.CREATED] * 5
    assert committer.batches == 3 and committer.largest_batch == 2
    assert [s for s, _b in probed.parsed] == [f"hello {i}" for i in range(5)]
    assert not any(held for _s, held in probed.parsed)
    assert not committer.alive and set(_writer_threads()) <= threads
    assert probed.probe.try_acquire()
    probed.close()
    lock.close()


def test_a_failure_while_waiting_for_the_lock_fails_that_batch_and_lets_go(
    intake: Intake, tmp_path: Path,
) -> None:
    """The lock thread's answer still comes after the failure: taken, and the lock let
    go, it is not found by the next batch, which is stored normally."""
    probed, committer, lock = _setup(intake, tmp_path)
    probed.hold()
    committer.start()

    async def deliver() -> list[Any]:
        jobs = [asyncio.ensure_future(committer.prepare_and_store(probed, _mail(0), ENV))]
        try:
            assert await _until(lambda: len(probed.parsed) == 1)
            jobs.append(asyncio.ensure_future(
                committer.prepare_and_store(probed, _mail(1, "fatal"), ENV)))
            assert await _until(lambda: len(probed.parsed) == 2)
            # The writer waits for the answer; this one goes to the next batch.
            jobs.append(asyncio.ensure_future(committer.prepare_and_store(probed, _mail(2), ENV)))
            await asyncio.sleep(0.05)
        finally:
            probed.let_go()
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(deliver())
    assert [type(r) for r in results[:2]] == [_Fatal, _Fatal]
    assert results[2].outcome is Outcome.CREATED
    assert committer.batches == 1
    committer.stop()
    assert probed.probe.try_acquire()
    probed.close()
    lock.close()


class _Unlockable(WriterLock):
    """Another process holds the lock, and waiting for it fails once (say, EINTR)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail = True

    def try_acquire(self) -> bool:
        return not self.fail and super().try_acquire()

    def acquire(self) -> None:
        if self.fail:
            self.fail = False
            raise InterruptedError("interrupted")
        super().acquire()


def test_a_lock_that_cannot_be_taken_fails_that_batch_alone(
    intake: Intake, tmp_path: Path,
) -> None:
    probed, committer, lock = _setup(
        intake, tmp_path, _Unlockable(tmp_path / "tg.db-writer.lock"))
    committer.start()

    async def deliver(i: int) -> Disposition:
        return await committer.prepare_and_store(probed, _mail(i), ENV)

    try:
        asyncio.run(deliver(0))
    except InterruptedError:
        pass
    else:
        raise AssertionError("the batch was stored without the lock")
    assert asyncio.run(deliver(1)).outcome is Outcome.CREATED
    committer.stop()
    assert probed.probe.try_acquire()
    probed.close()
    lock.close()
