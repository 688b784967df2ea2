"""The writer's per-message savepoints (on the DBAPI cursor) isolate messages of a batch."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text

from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.server.groupcommit import GroupCommitter
from ticketstore.models import Article

ENV = Envelope("c@customer.example", ("support@helpdesk.example",))


def _mail(n: int, subject: str) -> bytes:
    return (f"From: c{n}@customer.example\r\nTo: support@helpdesk.example\r\n"
            f"Subject: {subject} {n}\r\nMessage-ID: <sp-{n}@customer.example>\r\n\r\nbody\r\n"
            ).encode()


class _DatabaseErrorAfterWriting(Intake):
    """Writes a message, then makes the database refuse a statement.

    On PostgreSQL that aborts the whole transaction until ROLLBACK TO SAVEPOINT: the
    rest of the batch commits only if the savepoint really rolled back.
    """

    def store(self, conn: Any, p: Any, touches: Any) -> Any:
        disposition = super().store(conn, p, touches)
        if "broken" in p.msg.subject:
            conn.execute(text("SELECT no_such_column FROM tickets"))
        return disposition


class _NestsItsOwn(Intake):
    """Uses a SQLAlchemy savepoint inside the writer's own, and fails inside it."""

    def store(self, conn: Any, p: Any, touches: Any) -> Any:
        with conn.begin_nested():
            disposition = super().store(conn, p, touches)
            if "broken" in p.msg.subject:
                raise RuntimeError("inner failure")
        return disposition


@pytest.mark.parametrize("kind", [_DatabaseErrorAfterWriting, _NestsItsOwn])
def test_a_message_failing_inside_a_batch_leaves_the_others_committed(
    intake: Intake, kind: type[Intake],
) -> None:
    buggy = kind(intake.config, intake.factory)
    committer = GroupCommitter(intake.engine)
    futures = [committer.submit(buggy, buggy.prepare(_mail(i, "broken" if i in (1, 3) else "ok"),
                                                     ENV)) for i in range(5)]
    committer.start()
    committer.stop()
    assert committer.batches == 1 and committer.largest_batch == 5
    for i, f in enumerate(futures):
        if i in (1, 3):
            assert f.exception(1) is not None
        else:
            assert f.result(1).outcome is Outcome.CREATED
    with intake.factory() as session:
        subjects = sorted(session.scalars(select(Article.subject)).all())
    assert subjects == ["ok 0", "ok 2", "ok 4"]
