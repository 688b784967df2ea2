"""Listener address syntax, sd_notify over a real datagram socket, group commit."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.server import sdnotify
from gateway.server.groupcommit import GroupCommitter
from gateway.server.listeners import ListenAddress, ListenError, parse_listen
from tests.server_helpers import FailsOnPoison, short_socket_dir
from ticketstore.models import Article, Ticket

# -- listeners ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8024", ListenAddress("lmtp", host="127.0.0.1", port=8024)),
    ("[::1]:24", ListenAddress("lmtp", host="::1", port=24)),
    ("0.0.0.0:0", ListenAddress("lmtp", host="0.0.0.0", port=0)),
    ("localhost:2525", ListenAddress("lmtp", host="localhost", port=2525)),
    ("unix:/run/tg/lmtp.sock", ListenAddress("lmtp", path=Path("/run/tg/lmtp.sock"))),
    ("unix:var/lmtp.sock", ListenAddress("lmtp", path=Path("/base/var/lmtp.sock"))),
])
def test_parse_listen(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text, "lmtp", Path("/base")) == expected


@pytest.mark.parametrize("text", ["8024", "::1:24", "[::1]24", "host:http", "host:70000",
                                  ":8024", "unix:", "[::1"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ListenError):
        parse_listen(text)


# -- sd_notify ---------------------------------------------------------------------------


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_sends_a_datagram_to_a_path_socket() -> None:
    path = str(short_socket_dir() / "notify")
    with _receiver(path) as rx:
        assert sdnotify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
        assert rx.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_supports_abstract_sockets() -> None:
    name = f"tg-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as rx:
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert rx.recv(4096) == b"STOPPING=1"


def test_notify_without_systemd_is_a_no_op_and_a_dead_socket_no_crash() -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}) is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid() -> None:
    assert sdnotify.watchdog_interval({}) is None
    env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(env) == 2.0
    assert sdnotify.watchdog_interval({**env, "WATCHDOG_PID": "1"}) is None


# -- group commit ------------------------------------------------------------------------


def _mail(n: int, subject: str = "hello") -> bytes:
    return (f"From: c{n}@customer.example\r\nTo: support@helpdesk.example\r\n"
            f"Subject: {subject} {n}\r\nMessage-ID: <gc-{n}@customer.example>\r\n\r\nbody {n}\r\n"
            ).encode()


ENV = Envelope("c@customer.example", ("support@helpdesk.example",))


def test_queued_messages_commit_in_one_batch(intake: Intake) -> None:
    committer = GroupCommitter(intake.engine, max_batch=64)
    futures = [committer.submit(intake, intake.prepare(_mail(i), ENV)) for i in range(10)]
    committer.start()  # everything is queued before the writer runs: one batch
    results = [f.result(30) for f in futures]
    committer.stop()
    assert committer.batches == 1 and committer.largest_batch == 10
    assert [r.outcome for r in results] == [Outcome.CREATED] * 10
    assert len({r.ticket_number for r in results}) == 10


def test_batches_respect_the_maximum(intake: Intake) -> None:
    committer = GroupCommitter(intake.engine, max_batch=4)
    futures = [committer.submit(intake, intake.prepare(_mail(i), ENV)) for i in range(10)]
    committer.start()
    for f in futures:
        f.result(30)
    committer.stop()
    assert committer.batches == 3 and committer.largest_batch == 4


def _one_batch(intake: Intake, count: int, special: int, subject: str
               ) -> list[concurrent.futures.Future[Any]]:
    """`count` messages queued before the writer starts (one batch), message `special`
    with `subject`; the writer has stopped when this returns."""
    committer = GroupCommitter(intake.engine)
    futures = [committer.submit(intake, intake.prepare(
        _mail(i, subject if i == special else "ok"), ENV)) for i in range(count)]
    committer.start()
    committer.stop()
    return futures


def test_one_failing_message_does_not_fail_or_leak_into_the_batch(intake: Intake) -> None:
    futures = _one_batch(FailsOnPoison(intake.config, intake.factory), 5, 2, "poison")
    with pytest.raises(RuntimeError):
        futures[2].result(1)
    assert all(f.result(1).outcome is Outcome.CREATED for i, f in enumerate(futures) if i != 2)
    with intake.factory() as session:
        subjects = sorted(session.scalars(select(Article.subject)).all())
        assert subjects == ["ok 0", "ok 1", "ok 3", "ok 4"], "the savepoint undid message 2"
        assert len(session.scalars(select(Ticket)).all()) == 4


def test_a_failing_message_alone_in_its_batch_leaves_nothing_behind(intake: Intake) -> None:
    buggy = FailsOnPoison(intake.config, intake.factory)
    committer = GroupCommitter(intake.engine)
    committer.start()
    with pytest.raises(RuntimeError):
        committer.submit(buggy, buggy.prepare(_mail(1, "poison"), ENV)).result(30)
    ok = committer.submit(buggy, buggy.prepare(_mail(2, "ok"), ENV)).result(30)
    committer.stop()
    assert ok.outcome is Outcome.CREATED
    with intake.factory() as session:
        assert session.scalars(select(Article.subject)).all() == ["ok 2"]
        assert len(session.scalars(select(Ticket)).all()) == 1


def test_an_integrity_race_alone_in_its_batch_is_retried(intake: Intake) -> None:
    from sqlalchemy import exc as sa_exc

    class _Collides(Intake):
        calls = 0

        def store(self, conn: Any, p: Any, touches: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                super().store(conn, p, touches)
                raise sa_exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
            return super().store(conn, p, touches)

    racy = _Collides(intake.config, intake.factory)
    committer = GroupCommitter(intake.engine)
    committer.start()
    result = committer.submit(racy, racy.prepare(_mail(7), ENV)).result(30)
    committer.stop()
    assert racy.calls == 2
    assert result.outcome is Outcome.CREATED, "the first attempt's rows were rolled back"
    with intake.factory() as session:
        assert len(session.scalars(select(Ticket)).all()) == 1


def test_the_same_message_twice_in_one_batch_is_one_ticket(intake: Intake) -> None:
    committer = GroupCommitter(intake.engine)
    p = intake.prepare(_mail(1), ENV)
    futures = [committer.submit(intake, p), committer.submit(intake, p)]
    committer.start()
    committer.stop()
    assert [f.result(1).outcome for f in futures] == [Outcome.CREATED, Outcome.DUPLICATE]


def test_a_failed_commit_fails_every_message_of_the_batch(intake: Intake) -> None:
    class BrokenEngine:
        def begin(self) -> Any:
            raise OSError(28, "No space left on device")

    committer = GroupCommitter(BrokenEngine())  # type: ignore[arg-type]
    futures = [committer.submit(intake, intake.prepare(_mail(i), ENV)) for i in range(3)]
    committer.start()
    committer.stop()
    for f in futures:
        with pytest.raises(OSError):
            f.result(1)


def test_acknowledgement_waits_for_the_commit(intake: Intake) -> None:
    """A future must not resolve while its transaction is still open."""
    from sqlalchemy import event

    order: list[str] = []
    engine = intake.engine
    event.listen(engine, "commit", lambda conn: order.append("commit"))
    committer = GroupCommitter(intake.engine)
    committer.start()
    fut = committer.submit(intake, intake.prepare(_mail(1), ENV))
    fut.add_done_callback(lambda f: order.append("ack"))
    fut.result(30)
    committer.stop()
    assert order.index("commit") < order.index("ack")


def test_serve_accepts_verbose_after_the_command_as_make_run_writes_it() -> None:
    from gateway.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "-v"]).verbose is True
    assert parser.parse_args(["-v", "serve"]).verbose is True
    assert parser.parse_args(["serve"]).verbose is False


def test_inherited_sockets_only_for_our_pid_and_the_variables_are_consumed() -> None:
    from gateway.server.activation import inherited_sockets

    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "lmtp:smtp"}
    assert inherited_sockets(env) == []
    assert env == {}, "children must not see another process's sockets"
    assert inherited_sockets({}) == []


class _DatabaseRollsBack(Intake):
    """Stores, then has the database end the transaction the way SQLite does after a
    full disk or an I/O error (a ROLLBACK the writer did not ask for)."""

    def store(self, conn: Any, p: Any, touches: Any) -> Any:
        disposition = super().store(conn, p, touches)
        if "doomed" in p.msg.subject:
            conn.connection.dbapi_connection.execute("ROLLBACK")
        return disposition


def test_a_transaction_the_database_rolled_back_acknowledges_nothing(intake: Intake) -> None:
    if intake.engine.dialect.name != "sqlite":
        pytest.skip("SQLite ends transactions on its own; PostgreSQL refuses statements instead")
    futures = _one_batch(_DatabaseRollsBack(intake.config, intake.factory), 3, 1, "doomed")
    for future in futures:  # message 0 went with the rollback, 2 would start a new one
        with pytest.raises(OperationalError):
            future.result(1)
    with intake.factory() as session:
        assert session.scalars(select(Ticket)).all() == []
    # The writer recovers: the next batch is stored normally.
    committer = GroupCommitter(intake.engine)
    committer.start()
    assert committer.submit(intake, intake.prepare(_mail(9), ENV)).result(30).outcome is (
        Outcome.CREATED)
    committer.stop()


def test_messages_queued_while_the_writer_waits_for_the_lock_join_its_batch(
    intake: Intake,
) -> None:
    """With worker processes the writer may wait for another process's commit; what
    arrives meanwhile shares the transaction instead of waiting for the next one."""
    class _Held:
        """Another worker's commit in progress; says when the writer starts waiting."""

        def __init__(self) -> None:
            self.lock, self.waiting = threading.Lock(), threading.Event()

        def __enter__(self) -> None:
            self.waiting.set()
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    held = _Held()
    committer = GroupCommitter(intake.engine, lock=held)
    with held.lock:
        committer.start()
        first = committer.submit(intake, intake.prepare(_mail(0), ENV))
        assert held.waiting.wait(10)  # the writer has its batch of one and waits
        later = [committer.submit(intake, intake.prepare(_mail(i), ENV)) for i in (1, 2, 3)]
    for future in [first, *later]:
        assert future.result(30).outcome is Outcome.CREATED
    committer.stop()
    assert committer.batches == 1 and committer.largest_batch == 4
