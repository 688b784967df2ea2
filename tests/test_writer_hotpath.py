"""The writer's per-call shortcuts in Prebuilt and `detached` give what the long way gave."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite

from gateway.runtime import Store
from ticketstore.hotpath import Catalogue, Prebuilt, insert_all
from ticketstore.models import Event, Queue
from ticketstore.statements import _BUILDERS

WHEN = dt.datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=dt.UTC)
DIALECTS = [sqlite.dialect(), postgresql.dialect()]


def _sample(name: str, i: int) -> Any:
    if name.endswith("_at"):
        return WHEN + dt.timedelta(seconds=i)
    if name in ("tags", "envelope_recipients", "classification", "detail"):
        return [f"v{i}", {"k": i}]
    if name in ("raw", "message"):
        return b"raw %d" % i
    return f"{name}-{i}"


def _reference_params(built: Prebuilt, values: dict[str, Any]) -> Any:
    """The plain way: every name in order, its converter if it has one."""
    merged = {**built.fixed, **values}
    out = [built.binders[n](merged[n]) if n in built.binders else merged[n]
           for n in built.names]
    return tuple(out) if built.positional else dict(zip(built.names, out, strict=True))


def _plain(params: Any) -> Any:
    """psycopg's JSON wrapper compares by identity: compare what it wraps."""
    if isinstance(params, dict):
        return {k: getattr(v, "obj", v) for k, v in params.items()}
    return tuple(getattr(v, "obj", v) for v in params)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_params_match_the_plain_conversion_for_every_statement(dialect: Any) -> None:
    """Converters must land on their own column's value, for every statement shape."""
    checked = 0
    for name, builder in _BUILDERS.items():
        built = Prebuilt(builder(dialect.name), dialect)
        values = {n: _sample(n, i) for i, n in enumerate(built.names) if n not in built.fixed}
        assert _plain(built.params(values)) == _plain(_reference_params(built, values)), name
        checked += bool(built.binders)
    assert checked >= 4  # inserts of tickets, articles, events, outbox


def test_a_statement_with_one_parameter_gets_a_one_tuple() -> None:
    built = Prebuilt(_BUILDERS["tickets_by_numbers/1"]("sqlite"), sqlite.dialect())
    assert built.params({"n0": "1001"}) == ("1001",)


def test_a_statement_without_parameters_gets_an_empty_tuple() -> None:
    from sqlalchemy import select

    built = Prebuilt(select(Queue.__table__.c.id), sqlite.dialect())
    assert built.params({}) == ()


def test_fixed_values_can_still_be_given() -> None:
    built = Prebuilt(_BUILDERS["ticket_by_thread_key"]("sqlite"), sqlite.dialect())
    assert "closed" in built.params({"key": "k"})
    fixed = next(n for n, v in built.fixed.items() if v == "closed" and n in built.names)
    assert "pending" in built.params({"key": "k", fixed: "pending"})


def test_scalar_converts_the_returned_value(store: Store) -> None:
    """A RETURNING of a UTC datetime comes back timezone-aware (SQLite drops the zone)."""
    cat = Catalogue({"ev": lambda _d: insert_all(Event.__table__, Event.__table__.c.created_at)})
    with store.engine.begin() as conn:
        conn.execute(insert(Queue.__table__).values(name="Q", created_at=WHEN))
        got = cat(conn, "ev").scalar(conn, {"ticket_id": None, "article_id": None, "kind": "k",
                                             "created_at": WHEN, "detail": {}})
    assert got == WHEN and got.tzinfo is not None


def test_detached_configures_the_mappers_in_a_fresh_process() -> None:
    """`cls(**values)` configures the ORM first; a snapshot made first thing must too."""
    code = (
        "from ticketstore.statements import ticket_snapshot, _TICKET_KEYS\n"
        "from ticketstore.models import Ticket\n"
        "assert not Ticket.__mapper__.configured\n"
        "row = dict.fromkeys(_TICKET_KEYS); row.update(id=1, queue_id=2, queue_name='Q')\n"
        "t = ticket_snapshot(row)\n"
        "assert Ticket.__mapper__.configured\n"
        "assert (t.id, t.queue.name) == (1, 'Q')\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
