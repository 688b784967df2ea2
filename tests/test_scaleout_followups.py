"""Hot follow-ups from several writers on one PostgreSQL: no deadlock answered 451.

Monitoring storms and busy conversations send many follow-ups to the same few tickets;
each writer's batch updates those tickets. Batches lock their tickets in id order, and a
message that still loses a deadlock (or a serialization failure) is stored again by the
writer instead of being answered 451.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.transaction import CONFLICT_ATTEMPTS, store_alone
from gateway.mail.envelope import Envelope
from gateway.runtime import open_store
from gateway.server.groupcommit import GroupCommitter
from tests.scaleout_helpers import deliver, serve_instances
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

def _fail_next_articles(engine: Engine, times: int, sqlstate: str) -> None:
    """Make PostgreSQL itself refuse the next `times` article inserts with `sqlstate`."""
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
        conn.execute(text("DROP TRIGGER IF EXISTS fail_article ON articles"))
        conn.execute(text("CREATE TRIGGER fail_article BEFORE INSERT ON articles "
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
