"""The ticket store on SQLite and PostgreSQL: schema, bytes, times, constraints, errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect, select, text

from ticketstore.db import (
    SCHEMA_HEAD,
    StoreUnavailable,
    alembic_config,
    ensure_schema,
    is_transient,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from ticketstore.models import Article, Queue, Ticket
from ticketstore.snapshots import ArticleSnapshot, TicketSnapshot

NOW = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
ALL_BYTES = (bytes(range(256)) * 4 + b"\x00\r\n\r\n\x00" + "日本".encode("cp932")
             + "Grüße".encode("latin-1"))


def _ticket(session, number: str = "2026112210000013") -> Ticket:  # type: ignore[no-untyped-def]
    q = Queue(name=f"Q{number}", created_at=NOW)
    t = Ticket(number=number, title="t", queue=q, created_at=NOW, updated_at=NOW)
    session.add(t)
    session.flush()
    return t


def _article(t: Ticket, raw: bytes, message_id: str = "m@x", chash: str = "h") -> Article:
    return Article(ticket=t, direction="in", kind="email", message_id=message_id,
                   content_hash=chash, raw=raw, size=len(raw), created_at=NOW)


def test_empty_sqlite_is_created_and_upgraded_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "tg.db"
    engine = make_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    assert {"tickets", "articles", "alembic_version"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        # FULL: every commit syncs the WAL, so a 250 / exit 0 survives a power cut.
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2
    ensure_schema(engine)  # second call: a cheap no-op
    engine.dispose()


def test_empty_postgresql_needs_db_upgrade(pg_url: str) -> None:
    engine = make_engine(pg_url)
    with pytest.raises(StoreUnavailable, match="ticketgate db upgrade"):
        ensure_schema(engine)
    upgrade(engine)
    ensure_schema(engine)
    engine.dispose()


def test_schema_head_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() \
        == SCHEMA_HEAD


def test_sqlite_behind_the_code_is_upgraded_at_start(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tg.db'}")
    upgrade(engine, "0002_status")
    ensure_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() \
            == SCHEMA_HEAD
        assert "template" in {c["name"] for c in inspect(conn).get_columns("outbox")}
    engine.dispose()


def test_postgresql_behind_the_code_is_refused_with_the_fix(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine, "0002_status")
    with pytest.raises(StoreUnavailable, match=r"at 0002_status.*ticketgate db upgrade"):
        ensure_schema(engine)
    upgrade(engine)
    ensure_schema(engine)
    engine.dispose()


@pytest.fixture
def factory(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_raw_bytes_round_trip_exactly(factory) -> None:  # type: ignore[no-untyped-def]
    big = ALL_BYTES * 5000  # ~5 MB
    with factory() as s, s.begin():
        t = _ticket(s)
        s.add_all([_article(t, ALL_BYTES, "a@x"), _article(t, big, "b@x"), _article(t, b"", "c@x")])
    with factory() as s:
        got = dict(s.execute(select(Article.message_id, Article.raw)).all())
    assert got == {"a@x": ALL_BYTES, "b@x": big, "c@x": b""}


def test_times_are_utc_aware_and_naive_is_refused(factory) -> None:  # type: ignore[no-untyped-def]
    cet = dt.timezone(dt.timedelta(hours=1))
    with factory() as s, s.begin():
        t = _ticket(s)
        t.closed_at = dt.datetime(2026, 11, 22, 11, 0, tzinfo=cet)
    with factory() as s:
        t = s.execute(select(Ticket)).scalar_one()
        assert t.created_at == NOW and t.created_at.utcoffset() == dt.timedelta(0)
        assert t.closed_at == dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
    with factory() as s, pytest.raises(sa_exc.StatementError), s.begin():
        t = s.execute(select(Ticket)).scalar_one()
        t.updated_at = dt.datetime(2026, 11, 22, 12, 0)  # naive
        s.flush()


def test_message_id_and_hash_are_unique_together(factory) -> None:  # type: ignore[no-untyped-def]
    with factory() as s, s.begin():
        t = _ticket(s)
        s.add_all([_article(t, b"1", "m@x", "h1"), _article(t, b"2", "m@x", "h2")])
    with factory() as s, pytest.raises(sa_exc.IntegrityError), s.begin():
        t = s.execute(select(Ticket)).scalar_one()
        s.add(_article(t, b"3", "m@x", "h1"))
    with factory() as s:
        assert len(s.execute(select(Article)).all()) == 2


def test_unique_ticket_numbers(factory) -> None:  # type: ignore[no-untyped-def]
    with factory() as s, s.begin():
        _ticket(s, "1")
    with factory() as s, pytest.raises(sa_exc.IntegrityError), s.begin():
        s.add(Ticket(number="1", title="x", queue_id=1, created_at=NOW, updated_at=NOW))


def test_sqlite_writer_waits_then_fails_transiently(tmp_path: Path) -> None:
    path = tmp_path / "tg.db"
    engine = make_engine(f"sqlite:///{path}", busy_timeout=0.2)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sa_exc.OperationalError) as err, factory() as s, s.begin():
            _ticket(s)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in str(err.value)
    assert is_transient(err.value)
    with factory() as s, s.begin():  # free again
        _ticket(s)
    engine.dispose()


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (StoreUnavailable("down"), True),
        (sa_exc.OperationalError("x", {}, Exception("database is locked")), True),
        (sa_exc.InterfaceError("x", {}, Exception("closed")), True),
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EIO, "I/O error"), True),
        (OSError(errno.ENOENT, "missing"), False),
        (sa_exc.IntegrityError("x", {}, Exception("unique")), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_snapshots_carry_every_column_under_its_name() -> None:
    """The responder reads snapshots as it would read the models."""
    ticket_fields = [f.name for f in dataclasses.fields(TicketSnapshot)]
    assert ticket_fields == [c.key for c in Ticket.__table__.columns] + ["queue"]
    assert [f.name for f in dataclasses.fields(ArticleSnapshot)] == [
        c.key for c in Article.__table__.columns]
