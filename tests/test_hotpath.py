"""Prebuilt statements must behave exactly like executing the Core statement would."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import bindparam, insert, literal, select
from sqlalchemy import exc as sa_exc

from gateway.runtime import Store
from ticketstore.hotpath import Catalogue, Prebuilt
from ticketstore.models import Event, Queue, Ticket
from ticketstore.statements import STATEMENTS, detached, numbered, ticket_snapshot

E = Event.__table__
T = Ticket.__table__
WHEN = dt.datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=dt.UTC)


def _queue(store: Store) -> int:
    with store.engine.begin() as conn:
        return int(conn.execute(insert(Queue.__table__).values(name="Q", created_at=WHEN)
                                .returning(Queue.__table__.c.id)).scalar_one())


def _ticket_values(queue_id: int, number: str, state: str = "open") -> dict[str, object]:
    return dict(number=number, title="t", queue_id=queue_id, state=state, priority=3,
                customer_address="a@b.example", customer_name="A", customer_domain="b.example",
                customer_id="", tags=["x", "ü"], thread_key="k", linked_ticket_id=None,
                created_at=WHEN, updated_at=WHEN, closed_at=None)


def test_values_read_back_as_core_reads_them(store: Store) -> None:
    """JSON and UTC datetimes go through SQLAlchemy's type processors both ways."""
    qid = _queue(store)
    with store.engine.begin() as conn:
        tid = STATEMENTS(conn, "insert_ticket").scalar(conn, _ticket_values(qid, "1001"))
        STATEMENTS(conn, "insert_event").execute_many(conn, [
            {"ticket_id": tid, "article_id": None, "kind": "k1", "created_at": WHEN,
             "detail": {"a": [1, "é"]}},
            {"ticket_id": tid, "article_id": None, "kind": "k2", "created_at": WHEN,
             "detail": {}},
        ])
    with store.engine.connect() as conn:
        core = conn.execute(select(T).where(T.c.id == tid)).one()._asdict()
        events = conn.execute(select(E.c.kind, E.c.detail, E.c.created_at)
                              .order_by(E.c.id)).all()
        fast = STATEMENTS(conn, "tickets_by_numbers/1").rows(conn, numbered("n", ["1001"]))
    assert [tuple(e) for e in events] == [("k1", {"a": [1, "é"]}, WHEN), ("k2", {}, WHEN)]
    assert core["tags"] == ["x", "ü"] and core["created_at"] == WHEN
    assert len(fast) == 1
    assert {k: fast[0][k] for k in core} == core
    ticket = ticket_snapshot(fast[0])
    assert (ticket.number, ticket.tags, ticket.created_at) == ("1001", ["x", "ü"], WHEN)
    assert ticket.queue.id == qid


def test_constants_in_the_statement_are_bound(store: Store) -> None:
    """`state != 'closed'` carries its own value; forgetting it would match nothing."""
    qid = _queue(store)
    with store.engine.begin() as conn:
        STATEMENTS(conn, "insert_ticket").scalar(conn, _ticket_values(qid, "2001", "closed"))
        open_id = STATEMENTS(conn, "insert_ticket").scalar(conn, _ticket_values(qid, "2002"))
        row = STATEMENTS(conn, "ticket_by_thread_key").first(conn, {"key": "k"})
    assert row is not None and row["id"] == open_id


def test_driver_errors_surface_as_sqlalchemy_errors(store: Store) -> None:
    qid = _queue(store)
    with store.engine.connect() as conn, conn.begin():
        STATEMENTS(conn, "insert_ticket").scalar(conn, _ticket_values(qid, "3001"))
        with pytest.raises(sa_exc.IntegrityError), conn.begin_nested():
            STATEMENTS(conn, "insert_ticket").scalar(conn, _ticket_values(qid, "3001"))


def test_runs_inside_the_callers_transaction(store: Store) -> None:
    qid = _queue(store)
    with store.engine.connect() as conn:
        with conn.begin() as tx:
            STATEMENTS(conn, "insert_ticket").scalar(conn, _ticket_values(qid, "4001"))
            tx.rollback()
        assert conn.execute(select(T.c.id).where(T.c.number == "4001")).first() is None


def test_expanding_in_lists_are_refused_not_run_wrongly(store: Store) -> None:
    stmt = select(T.c.id).where(T.c.number.in_(["a", "b"]))
    with pytest.raises(ValueError, match="expanding"):
        Prebuilt(stmt, store.engine.dialect)


def test_literal_in_lists_and_a_catalogue_defined_later(store: Store) -> None:
    cat = Catalogue({})
    name = cat.define("kinds", lambda _d: select(E.c.kind).where(
        E.c.kind.in_([literal("a"), literal("c")]), E.c.ticket_id.is_(None)
    ).order_by(E.c.kind))
    assert cat.define("kinds", lambda _d: select(E.c.id)) == "kinds"  # first definition stays
    with store.engine.begin() as conn:
        conn.execute(insert(E), [{"kind": k, "created_at": WHEN, "detail": {}} for k in "abc"])
        assert [r["kind"] for r in cat(conn, name).rows(conn, {})] == ["a", "c"]
        assert cat(conn, name) is cat(conn, name)  # compiled once per dialect


def test_a_missing_value_is_an_error_not_a_null(store: Store) -> None:
    with store.engine.begin() as conn, pytest.raises(KeyError, match="kind"):
        STATEMENTS(conn, "insert_event").execute(conn, {"ticket_id": None, "article_id": None,
                                                        "created_at": WHEN, "detail": {}})


def test_detached_snapshots_read_like_models() -> None:
    q = detached(Queue, {"id": 3, "name": "Support"})
    assert (q.id, q.name) == (3, "Support")
    t = detached(Ticket, {"number": "5001", "tags": ["a"]})
    assert (t.number, t.tags) == ("5001", ["a"])


def test_positional_parameters_follow_the_sql_order() -> None:
    """SQLite binds by position: values must be passed in the order the SQL names them."""
    from sqlalchemy.dialects import sqlite

    stmt = select(T.c.id).where(T.c.state == bindparam("s"), T.c.number == bindparam("n"))
    built = Prebuilt(stmt, sqlite.dialect())
    assert built.names == ("s", "n")
    assert built.params({"n": "42", "s": "open"}) == ("open", "42")
