"""The failure table: which failure gets which reply and pipe exit code."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from gateway import causes, failures
from gateway.sysexits import EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from ticketstore.db import SchemaTooNew, StoreUnavailable, make_engine


def test_a_database_failure_is_transient_and_anything_else_a_quarantined_bug() -> None:
    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    assert failures.failure_of(locked) is failures.TRANSIENT
    assert failures.failure_of(RuntimeError("bug")) is failures.UNEXPECTED
    assert failures.UNEXPECTED.quarantine and not failures.TRANSIENT.quarantine


def test_our_failures_never_bounce() -> None:
    """Postfix bounces on 5xx and on exit codes it does not know: a failure of our own
    code must be a 4xx reply and one of the pipe's few exit codes."""
    ours = [failures.TRANSIENT, failures.UNEXPECTED, failures.INVALID_RULES,
            failures.CANNOT_START, failures.BAD_CONFIG, failures.CRASHED]
    for failure in ours:
        assert failure.reply.startswith("451 4.3.0"), failure
        assert failure.exit_code == EX_TEMPFAIL, failure
    table = [*ours, failures.UNKNOWN_RECIPIENT, failures.TOO_BIG, failures.EMPTY]
    assert {f.exit_code for f in table} <= failures.PIPE_EXIT_CODES


def test_one_stderr_line_without_the_exception_text() -> None:
    line = failures.TOO_BIG.line(size=5000, limit=4096)
    assert line == (
        "5.3.4 ticketgate pipe: message of 5000 bytes exceeds the limit of 4096 bytes")
    assert "\n" not in failures.TRANSIENT.line(cause="database locked")


def test_a_permanent_failure_s_line_starts_with_its_dsn_status() -> None:
    """pipe(8) takes a leading enhanced status code as the bounce's DSN status."""
    assert failures.TOO_BIG.exit_code == EX_UNAVAILABLE
    assert failures.TOO_BIG.line(size=1, limit=0).startswith("5.3.4 ")
    assert failures.UNKNOWN_RECIPIENT.line().startswith("5.1.1 ")
    assert failures.TRANSIENT.line(cause="disk full").startswith("ticketgate pipe: ")
    for temporary in (failures.UNEXPECTED, failures.EMPTY):
        assert temporary.line().startswith("ticketgate pipe: ")


@pytest.mark.parametrize(("code", "text", "expected"), [
    (250, "2.0.0 Ok", EX_OK),
    (451, "4.3.0 Temporary failure", EX_TEMPFAIL),
    (421, "4.3.2 shutting down", EX_TEMPFAIL),
    (550, "5.1.1 No such recipient", EX_NOUSER),
    (550, "5.7.1 policy", EX_TEMPFAIL),
    (552, "5.3.4 too big", EX_TEMPFAIL),  # not the pipe's decision: never 0 (handoff.py)
    (554, "5.0.0 whatever", EX_TEMPFAIL),
    (500, "Error: bad syntax", EX_TEMPFAIL),
])
def test_exit_code_for_a_reply_of_the_daemon(code: int, text: str, expected: int) -> None:
    assert failures.exit_code_for_reply(code, text) == expected


def test_combined_exit_code_of_several_recipients() -> None:
    assert failures.combine_exit_codes([EX_OK, EX_OK]) == EX_OK
    assert failures.combine_exit_codes([EX_OK, EX_TEMPFAIL]) == EX_TEMPFAIL
    assert failures.combine_exit_codes([EX_NOUSER, EX_OK]) == EX_OK
    assert failures.combine_exit_codes([EX_NOUSER]) == EX_NOUSER
    assert failures.combine_exit_codes([]) == EX_TEMPFAIL



# -- causes: real database errors turned into words an admin can act on -------------------


def _error_of(engine: Engine, sql: str, params: dict[str, object] | None = None) -> Exception:
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params or {})
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def _assert_clean(cause: causes.Cause, *secrets: str) -> None:
    """One line, no class name, no SQL, no customer data, no password."""
    assert "\n" not in cause.description
    for word in ("OperationalError", "IntegrityError", "Error:", "INSERT", "UPDATE", *secrets):
        assert word not in cause.description, cause
    assert "\n" not in failures.tempfail_reply(cause.category)


def test_a_read_only_sqlite_database_names_the_file_and_sqlites_words(tmp_path: Path) -> None:
    db = tmp_path / "tg.db"
    setup = create_engine(f"sqlite:///{db}")
    with setup.begin() as conn:
        conn.execute(text("CREATE TABLE t (customer TEXT)"))
    setup.dispose()
    engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    try:
        exc = _error_of(engine, "INSERT INTO t VALUES (:c)", {"c": "alice@customer.example"})
    finally:
        engine.dispose()
    cause = causes.cause_of(exc, f"sqlite:///{db}")
    assert cause.category == "database read-only"
    assert cause.description.startswith(
        f"database at {db} is read-only (attempt to write a readonly database)")
    assert failures.tempfail_reply(cause.category) == (
        "451 4.3.0 database read-only, try again later")
    _assert_clean(cause, "alice@customer.example")


def test_a_locked_sqlite_database_says_for_how_long(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    holder, waiter = make_engine(url, busy_timeout=5), make_engine(url, busy_timeout=0.05)
    try:
        with holder.begin() as conn:  # BEGIN IMMEDIATE: holds the write lock
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            exc = _error_of(waiter, "CREATE TABLE u (x INTEGER)")
    finally:
        holder.dispose()
        waiter.dispose()
    cause = causes.cause_of(exc, url, busy_timeout=0.05)
    assert cause.category == "database locked"
    assert cause.description == (f"database at {tmp_path}/tg.db locked for 0.05 s by another "
                                 "process (database is locked)")
    _assert_clean(cause)


def test_a_full_sqlite_database_is_disk_full(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x BLOB)"))
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA max_page_count = 3")  # SQLite's own "disk full"
            try:
                conn.execute(text("INSERT INTO t VALUES (zeroblob(100000))"))
            except OperationalError as e:
                exc = e
            else:
                raise AssertionError("no error")
    finally:
        engine.dispose()
    cause = causes.cause_of(exc, url)
    assert cause.category == "disk full"
    assert cause.description == (f"disk full: database at {tmp_path}/tg.db "
                                 "(database or disk is full)")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_postgresql_refusing_names_host_and_port_and_never_the_password() -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://ticketgate:s3cret-pw@127.0.0.1:{port}/ticketgate"
    engine = create_engine(url)
    try:
        exc = _error_of(engine, "SELECT 1")
    finally:
        engine.dispose()
    cause = causes.cause_of(exc, engine.url)
    assert cause.category == "database unavailable"
    assert cause.description == f"PostgreSQL at 127.0.0.1:{port} refused the connection"
    _assert_clean(cause, "s3cret-pw")
    assert failures.tempfail_reply(cause.category) == (
        "451 4.3.0 database unavailable, try again later")


def test_a_constraint_error_quotes_the_database_but_not_the_values(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (a TEXT UNIQUE)"))
            conn.execute(text("INSERT INTO t VALUES ('bob@customer.example')"))
        exc = _error_of(engine, "INSERT INTO t VALUES (:a)", {"a": "bob@customer.example"})
    finally:
        engine.dispose()
    cause = causes.cause_of(exc, url)
    assert cause.category == "database error"
    assert cause.description == f"database at {tmp_path}/tg.db: UNIQUE constraint failed: t.a"
    _assert_clean(cause, "bob@customer.example")


def test_our_own_conditions_and_bugs() -> None:
    assert causes.cause_of(SchemaTooNew("0009_x")) == causes.Cause(
        "database upgraded by a newer ticketgate",
        "the database was upgraded by a newer ticketgate (schema 0009_x); upgrade this host")
    assert causes.cause_of(StoreUnavailable("database schema missing: run `x`")).category == (
        "database schema mismatch")
    bug = causes.cause_of(KeyError("alice@customer.example"))
    assert bug.category == "internal error" and "alice" not in bug.description
    full = causes.cause_of(OSError(28, os.strerror(28), "/var/spool/x.eml"))
    assert full == causes.Cause("disk full", "disk full: No space left on device: /var/spool/x.eml")


@pytest.mark.parametrize(("code", "text", "category"), [
    (451, "4.3.0 database read-only, try again later", "database read-only"),
    (451, "4.3.0 Temporary failure, please try again later", None),
    (421, "4.3.2 Service shutting down, try again later", "Service shutting down"),
    (250, "2.0.0 Ok: created, try again later", None),
])
def test_the_category_a_daemons_reply_carries(code: int, text: str,
                                              category: str | None) -> None:
    assert failures.category_of_reply(code, text) == category
