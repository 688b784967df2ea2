"""Hot follow-ups from several writers on one PostgreSQL: no deadlock answered 451.

Monitoring storms and busy conversations send many follow-ups to the same few tickets;
each follow-up touches its ticket's row (`updated_at`). A batch touches those rows only
at its end, in id order, so writers do not hold them while storing the rest of their
batch nor take them in a cycle; a message that still loses a deadlock (or a
serialization failure) is stored again by the writer instead of being answered 451.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, event, func, select, text, update
from sqlalchemy import exc as sa_exc

from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.outcome import Disposition, Outcome
from gateway.intake.prepared import Prepared
from gateway.intake.transaction import CONFLICT_ATTEMPTS, Touches, store_alone, touch_tickets
from gateway.mail.envelope import Envelope
from gateway.runtime import open_store
from gateway.server.groupcommit import GroupCommitter
from tests.scaleout_helpers import deliver, serve_instances
from tests.server_helpers import FailsOnPoison
from tests.support import make_config
from ticketstore.db import make_engine
from ticketstore.models import Article, Ticket

ENVELOPE = Envelope("customer@sender.example", ("support@helpdesk.example",))


def message(n: int, subject: str = "status report") -> bytes:
    return (f"From: customer@sender.example\r\nTo: support@helpdesk.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: <hot-{n}@sender.example>\r\n\r\n"
            f"report {n}\r\n").encode()


@pytest.fixture
def pg(pg_databases: object) -> str:
    return pg_databases.migrated()  # type: ignore[attr-defined,no-any-return]


def _count(url: str, model: object) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(model)) or 0)  # type: ignore[arg-type]
    finally:
        engine.dispose()


# -- the writer retries what PostgreSQL reports as a lost conflict ------------------------

def _fail_next_articles(engine: Engine, times: int, sqlstate: str,
                        table: str = "articles", when: str = "INSERT") -> None:
    """Make PostgreSQL itself refuse the next `times` inserts into `table` (or `when`
    statements on it) with `sqlstate`."""
    with engine.begin() as conn:
        # A sequence: unlike a counter row, nextval() survives the rollback it causes.
        conn.execute(text("DROP SEQUENCE IF EXISTS fail_seq"))
        conn.execute(text("CREATE SEQUENCE fail_seq"))
        conn.execute(text(f"""
            CREATE OR REPLACE FUNCTION fail_article() RETURNS trigger AS $$
            BEGIN
              IF nextval('fail_seq') <= {int(times)} THEN
                RAISE EXCEPTION 'injected conflict' USING ERRCODE = '{sqlstate}';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql"""))
        conn.execute(text(f"DROP TRIGGER IF EXISTS fail_article ON {table}"))
        conn.execute(text(f"CREATE TRIGGER fail_article BEFORE {when} ON {table} "
                          "FOR EACH ROW EXECUTE FUNCTION fail_article()"))


@pytest.fixture
def pg_intake(tmp_path: Path, pg: str) -> Iterator[tuple[Intake, Engine]]:
    config: Config = make_config(tmp_path, pg, autoresponse={"enabled": False})
    store = open_store(config, create=False)
    intake = Intake(config, store.factory)
    intake.sync_queues()
    yield intake, store.engine
    store.dispose()


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
def test_a_message_that_lost_a_deadlock_is_stored_again(
        pg_intake: tuple[Intake, Engine], sqlstate: str) -> None:
    intake, engine = pg_intake
    _fail_next_articles(engine, 2, sqlstate)
    d = store_alone(engine, intake, intake.prepare(message(1), ENVELOPE))
    assert d.ticket_number and _count(str(engine.url.render_as_string(False)), Article) == 1


def test_a_message_that_always_deadlocks_fails_after_the_retries(
        pg_intake: tuple[Intake, Engine]) -> None:
    intake, engine = pg_intake
    _fail_next_articles(engine, CONFLICT_ATTEMPTS, "40P01")
    with pytest.raises(Exception, match="injected conflict"):
        store_alone(engine, intake, intake.prepare(message(1), ENVELOPE))


def test_a_deadlock_in_a_batch_costs_no_message(pg_intake: tuple[Intake, Engine]) -> None:
    intake, engine = pg_intake
    _fail_next_articles(engine, 1, "40P01")
    committer = GroupCommitter(engine)
    futures = [committer.submit(intake, intake.prepare(message(n), ENVELOPE))
               for n in range(5)]
    committer.start()  # the five wait in the queue: one batch
    try:
        results = [f.result(30) for f in futures]
    finally:
        committer.stop()
    assert committer.batches == 1 and len({r.ticket_number for r in results}) == 5
    assert _count(engine.url.render_as_string(False), Article) == 5


# -- a batch touches its follow-ups' tickets last, in id order ---------------------------

def _tickets(intake: Intake, count: int) -> list[tuple[int, str]]:
    """`count` new tickets of ENVELOPE's customer: (id, number), oldest first."""
    numbers = [intake.process(message(-n, f"ticket {n}"), ENVELOPE).ticket_number
               for n in range(1, count + 1)]
    with intake.engine.connect() as conn:
        rows = dict(conn.execute(select(Ticket.number, Ticket.id)).all())
    return [(rows[n], n) for n in numbers if n is not None]


def _updated_at(intake: Intake, ticket_id: int) -> dt.datetime:
    with intake.engine.connect() as conn:
        at = conn.scalar(select(Ticket.updated_at).where(Ticket.id == ticket_id))
    assert at is not None
    return at


def _batch(intake: Intake, raws: list[bytes]) -> list[Disposition | BaseException]:
    """`raws` stored by one group-commit batch (all queued before the writer starts):
    each one's disposition, or what it raised."""
    committer = GroupCommitter(intake.engine)
    futures = [committer.submit(intake, intake.prepare(raw, ENVELOPE)) for raw in raws]
    committer.start()
    try:
        return [f.exception(30) or f.result(30) for f in futures]
    finally:
        committer.stop()


def _outcomes(results: list[Disposition | BaseException]) -> list[Outcome | str]:
    return [r.outcome if isinstance(r, Disposition) else type(r).__name__ for r in results]


def test_a_batch_touches_its_follow_ups_tickets_last_and_in_id_order(intake: Intake) -> None:
    (low, low_number), (high, high_number) = _tickets(intake, 2)
    before = _updated_at(intake, low), _updated_at(intake, high)
    statements: list[tuple[str, list[dict[str, object]]]] = []

    def seen(conn: Connection, statement: object, multiparams: list[dict[str, object]],
             params: dict[str, object], options: object) -> None:
        words = str(statement).split()  # "UPDATE tickets ...", "INSERT INTO articles ..."
        statements.append((" ".join(words[:3] if words[0] == "INSERT" else words[:2]),
                           multiparams or [params]))

    event.listen(intake.engine, "before_execute", seen)
    try:
        results = _batch(intake, [message(1, f"Re: [Ticket#{high_number}] status"),
                                  message(2, f"Re: [Ticket#{low_number}] status"),
                                  message(3, "a new problem")])
    finally:
        event.remove(intake.engine, "before_execute", seen)
    assert _outcomes(results) == [Outcome.FOLLOW_UP, Outcome.FOLLOW_UP, Outcome.CREATED]
    kinds = [k for k, _ in statements]
    touched = [i for i, (k, _) in enumerate(statements) if k == "UPDATE tickets"]
    assert len(touched) == 1, kinds
    last_write = max(i for i, k in enumerate(kinds) if k.startswith("INSERT INTO"))
    assert touched[0] > last_write, f"a ticket row was locked mid-batch: {kinds}"
    assert [p["ticket_id"] for p in statements[touched[0]][1]] == [low, high]
    assert _updated_at(intake, low) > before[0] and _updated_at(intake, high) > before[1]


def test_a_failed_message_of_a_batch_does_not_touch_its_ticket(intake: Intake) -> None:
    [(ticket, number)] = _tickets(intake, 1)
    before = _updated_at(intake, ticket)
    buggy = FailsOnPoison(intake.config, intake.factory)
    results = _batch(buggy, [message(1, f"Re: [Ticket#{number}] poison"),
                             message(2, "a new problem")])
    assert _outcomes(results) == ["RuntimeError", Outcome.CREATED]
    assert _updated_at(intake, ticket) == before


def test_a_touch_never_moves_updated_at_back(intake: Intake) -> None:
    [(ticket, _)] = _tickets(intake, 1)
    later = intake.clock() + dt.timedelta(hours=1)
    with intake.engine.begin() as conn:
        conn.execute(update(Ticket).where(Ticket.id == ticket).values(updated_at=later))
        touches = Touches()
        touches.latest[ticket] = later - dt.timedelta(minutes=5)
        touch_tickets(conn, touches)
    assert _updated_at(intake, ticket) == later


class _Probes(Intake):
    """While storing a message with "probe" in its subject, asks from another connection
    whether the batch holds the row of `self.watched` (NOWAIT: no waiting)."""

    watched = 0
    locked: bool | None = None

    def store(self, conn: Connection, p: Prepared, touches: Touches) -> Disposition:
        if "probe" in p.msg.subject:
            with self.engine.connect() as other:
                try:
                    other.execute(text("SELECT id FROM tickets WHERE id = :id "
                                       "FOR NO KEY UPDATE NOWAIT"), {"id": self.watched})
                    self.locked = False
                except sa_exc.OperationalError as exc:  # 55P03 lock_not_available
                    assert getattr(exc.orig, "sqlstate", None) == "55P03", exc
                    self.locked = True
                other.rollback()
        return super().store(conn, p, touches)


def test_a_batch_does_not_hold_a_follow_ups_ticket_while_storing_the_rest(
        pg_intake: tuple[Intake, Engine]) -> None:
    intake, _ = pg_intake
    [(ticket, number)] = _tickets(intake, 1)
    probing = _Probes(intake.config, intake.factory)
    probing.watched = ticket
    results = _batch(probing, [message(1, f"Re: [Ticket#{number}] status"),
                               message(2, "probe: a new problem")])
    assert _outcomes(results) == [Outcome.FOLLOW_UP, Outcome.CREATED]
    assert probing.locked is False, "another writer would wait for the whole batch"


def test_a_deadlock_while_touching_the_tickets_costs_no_message(
        pg_intake: tuple[Intake, Engine]) -> None:
    """The touches run outside every message's savepoint: losing them loses the batch's
    transaction, and each message is stored again alone."""
    intake, engine = pg_intake
    [(ticket, number)] = _tickets(intake, 1)
    before = _updated_at(intake, ticket)
    _fail_next_articles(engine, 1, "40P01", table="tickets", when="UPDATE")
    results = _batch(intake, [message(n, f"Re: [Ticket#{number}] status") for n in (1, 2)]
                     + [message(3, "a new problem")])
    assert _outcomes(results) == [Outcome.FOLLOW_UP, Outcome.FOLLOW_UP, Outcome.CREATED]
    assert _count(engine.url.render_as_string(False), Article) == 4
    assert _updated_at(intake, ticket) > before


# -- several serve processes, real LMTP clients --------------------------------------------

TICKETS, MESSAGES, CLIENTS = 4, 600, 16


def test_hot_follow_ups_from_two_instances_are_all_stored_once(tmp_path: Path, pg: str) -> None:
    with serve_instances(tmp_path, pg, count=2, workers=2) as sockets:
        replies = deliver(sockets[0], [message(-n, f"ticket {n}") for n in range(1, TICKETS + 1)])
        numbers = [re.search(rb"ticket (\d+)", r[1]).group(1).decode()  # type: ignore[union-attr]
                   for r in replies]
        follow_ups = [message(n, f"Re: [Ticket#{numbers[n % TICKETS]}] status")
                      for n in range(MESSAGES)]
        share = [(sockets[c % 2], follow_ups[c::CLIENTS]) for c in range(CLIENTS)]
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            answers = [r for rs in pool.map(lambda s: deliver(*s), share) for r in rs]
    refused = [a for a in answers if a[0] != 250]
    assert not refused, f"{len(refused)} of {MESSAGES} refused: {refused[:3]}"
    assert all(b"follow-up" in a[1] for a in answers), answers[:3]
    engine = make_engine(pg)
    try:
        with engine.connect() as conn:
            ids = conn.execute(select(Article.message_id)).scalars().all()
            assert conn.scalar(select(func.count()).select_from(Ticket)) == TICKETS
    finally:
        engine.dispose()
    assert len(ids) == len(set(ids)) == TICKETS + MESSAGES
