"""The group-commit writer's connection: recovery after a lost one, BEGIN and COMMIT failures."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy import exc as sa_exc

from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.server.groupcommit import GroupCommitter
from tests.support import make_config
from ticketstore.db import is_transient, make_engine, make_sessionmaker, upgrade
from ticketstore.models import Ticket

ENV = Envelope("c@customer.example", ("support@helpdesk.example",))


def _mail(n: int, subject: str = "hello") -> bytes:
    return (f"From: c{n}@customer.example\r\nTo: support@helpdesk.example\r\n"
            f"Subject: {subject} {n}\r\nMessage-ID: <wc-{n}@customer.example>\r\n\r\nbody {n}\r\n"
            ).encode()


def _tickets(intake: Intake) -> int:
    with intake.factory() as session:
        return len(session.scalars(select(Ticket)).all())


class _Invalidates(Intake):
    """Loses its connection (like a server restart would) in the middle of a message."""

    def store(self, conn: Any, p: Any, touches: Any) -> Any:
        if "lose" in p.msg.subject:
            conn.invalidate()
            raise sa_exc.OperationalError("SELECT", {}, Exception("server closed the connection"),
                                          connection_invalidated=True)
        return super().store(conn, p, touches)


def test_the_next_batch_after_a_lost_connection_gets_a_new_one(intake: Intake) -> None:
    racy = _Invalidates(intake.config, intake.factory)
    committer = GroupCommitter(intake.engine)
    committer.start()
    with pytest.raises(sa_exc.OperationalError):
        committer.submit(racy, racy.prepare(_mail(1, "lose"), ENV)).result(30)
    ok = committer.submit(racy, racy.prepare(_mail(2), ENV)).result(30)
    committer.stop()
    assert ok.outcome is Outcome.CREATED
    assert _tickets(intake) == 1


def test_a_failed_commit_fails_the_batch_and_the_next_batch_commits(intake: Intake) -> None:
    fail = [True]

    def _insert(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT INTO articles"):
            conn.info["writes_articles"] = True

    def _commit(conn: Any) -> None:
        # The batch's COMMIT, not that of a ticket-number claim (PostgreSQL claims
        # numbers in a transaction of its own: ticketstore/numbers.py).
        if conn.info.pop("writes_articles", False) and fail[0]:
            fail[0] = False
            raise OSError(28, "No space left on device")

    event.listen(intake.engine, "before_cursor_execute", _insert)
    event.listen(intake.engine, "commit", _commit)
    committer = GroupCommitter(intake.engine)
    futures = [committer.submit(intake, intake.prepare(_mail(i), ENV)) for i in range(3)]
    committer.start()
    for f in futures:
        with pytest.raises(OSError):
            f.result(30)
    assert _tickets(intake) == 0, "nothing of the failed batch is durable"
    again = committer.submit(intake, intake.prepare(_mail(0), ENV)).result(30)
    committer.stop()
    assert again.outcome is Outcome.CREATED, "the failed batch left nothing behind"
    assert _tickets(intake) == 1


def test_the_writer_survives_a_postgresql_backend_restart(intake: Intake) -> None:
    """The pool's pre-ping finds the terminated backend before the next batch."""
    if intake.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (the pool pre-pings there)")
    committer = GroupCommitter(intake.engine)
    committer.start()
    committer.submit(intake, intake.prepare(_mail(1), ENV)).result(30)
    admin = make_engine(intake.engine.url.render_as_string(hide_password=False))
    try:
        with admin.connect() as conn:  # not from the writer's pool: it holds the one to end
            killed = conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
            conn.commit()
    finally:
        admin.dispose()
    assert killed, "the writer's pooled backend was there to terminate"
    ok = committer.submit(intake, intake.prepare(_mail(2), ENV)).result(30)
    committer.stop()
    assert ok.outcome is Outcome.CREATED
    assert _tickets(intake) == 2


# -- SQLite's BEGIN IMMEDIATE --------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'tg.db'}", busy_timeout=0.1)
    upgrade(engine)
    yield engine
    engine.dispose()


def _other_writer(engine: Any) -> sqlite3.Connection:
    return sqlite3.connect(engine.url.database, isolation_level=None, timeout=0)


def test_begin_takes_the_write_lock_before_any_statement(sqlite_engine: Any) -> None:
    other = _other_writer(sqlite_engine)
    try:
        with sqlite_engine.connect() as conn, conn.begin(), \
                pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        with sqlite_engine.connect().execution_options(sqlite_begin="DEFERRED") as conn, \
                conn.begin():
            other.execute("BEGIN IMMEDIATE")  # a deferred reader holds no lock
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_a_locked_begin_is_a_transient_sqlalchemy_error_and_the_writer_recovers(
    sqlite_engine: Any, tmp_path: Any,
) -> None:
    config = make_config(tmp_path, str(sqlite_engine.url))
    intake = Intake(config, make_sessionmaker(sqlite_engine))
    intake.sync_queues()
    committer = GroupCommitter(sqlite_engine)
    committer.start()
    committer.submit(intake, intake.prepare(_mail(1), ENV)).result(30)
    holder = _other_writer(sqlite_engine)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sa_exc.OperationalError, match="locked") as err:
            committer.submit(intake, intake.prepare(_mail(2), ENV)).result(30)
        assert is_transient(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ok = committer.submit(intake, intake.prepare(_mail(2), ENV)).result(30)
    committer.stop()
    assert ok.outcome is Outcome.CREATED
    assert _tickets(intake) == 2
