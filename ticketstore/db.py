"""Engine and session set-up, schema upgrades, and the transient-error boundary.

SQLite runs in WAL mode with synchronous=FULL (a commit is on disk before we acknowledge),
a busy timeout and `BEGIN IMMEDIATE`, so concurrent writers (two pipe processes, or the
daemon and a pipe) queue for the write lock instead of failing on a lock upgrade.
PostgreSQL needs nothing special.
"""

from __future__ import annotations

import errno
import importlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class StoreUnavailable(Exception):
    """The database cannot take the write now (locked, down, disk full): retry later."""


class SchemaTooNew(StoreUnavailable):
    """A newer ticketgate upgraded the schema: this host needs upgrading, not the database.

    Transient for the intake (the MTA keeps the mail while a rolling upgrade reaches this
    host), a clear one-line error for the CLI.
    """

    def __init__(self, revision: str) -> None:
        self.revision = revision
        super().__init__(f"the database was upgraded by a newer ticketgate (schema {revision}); "
                         "upgrade this host")


# SQLite messages after which the connection itself is suspect: it may have been opened
# read-only (SQLite silently does so when it cannot open the file for writing) or have
# lost its file. Invalidating it makes the next transaction open a fresh one, so the
# daemon recovers by itself once the admin has fixed the file or the disk.
_SQLITE_REOPEN = ("readonly database", "unable to open database", "disk i/o error",
                  "database or disk is full", "database disk image is malformed")


def make_engine(url: str, busy_timeout: float = 10.0, pool_size: int = 5,
                prepared_statements: bool = True) -> Engine:
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
        )
        _sqlite_pragmas(engine, busy_timeout)
        if db_path and db_path != ":memory:":
            _sqlite_reopen_when_permissions_change(engine, Path(db_path))
        return engine
    # psycopg prepares a statement run often on a connection; behind PgBouncer in
    # transaction mode (before 1.21) the next transaction may run on another server
    # connection, where it does not exist (docs/scale-out.md).
    connect_args = {} if prepared_statements else {"prepare_threshold": None}
    return create_engine(url, pool_size=pool_size, pool_pre_ping=True,
                         connect_args=connect_args)


def _sqlite_reopen_when_permissions_change(engine: Engine, path: Path) -> None:
    """SQLite's pre-ping: a pooled connection is replaced when the file's writability for
    this process changed since it was opened.

    A connection opened while the file was not writable stays read-only for good (SQLite
    falls back to read-only without saying so), and one opened before the file was made
    read-only keeps writing through its descriptor. Both would hide the admin's change;
    one `access()` per checkout makes the pool follow it, as `pool_pre_ping` does for a
    restarted PostgreSQL.
    """

    def writable() -> bool:
        return os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK)

    @event.listens_for(engine, "connect")
    def _remember(_dbapi_conn: Any, record: Any) -> None:
        record.info["writable"] = writable()

    @event.listens_for(engine, "checkout")
    def _recheck(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("writable") != writable():
            # The documented way to have the pool discard a connection and open another.
            raise sa_exc.DisconnectionError("database file permissions changed")

    @event.listens_for(engine, "handle_error")
    def _invalidate(context: Any) -> None:
        message = str(context.original_exception).lower()
        if any(m in message for m in _SQLITE_REOPEN):
            context.is_disconnect = True


def _sqlite_pragmas(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL, not WAL's usual NORMAL: NORMAL may lose the last commits on a power cut,
        # and the MTA deletes its copy as soon as we answer 250 (DESIGN: durable commit).
        # Group commit is what keeps the per-commit sync affordable.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front; read-only users (status page) pass
        # execution_options(sqlite_begin="DEFERRED") so they never block intake.
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def dialect_insert(dialect_name: str) -> Any:
    """The dialect's `insert` (with ON CONFLICT), importing only the dialect in use.

    `from sqlalchemy.dialects import postgresql` costs ~90 ms at import, which every
    `ticketgate pipe` on SQLite would otherwise pay for nothing.
    """
    return importlib.import_module(f"sqlalchemy.dialects.{dialect_name}").insert


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (idempotent)."""
    from alembic import command

    from . import rollups

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if revision == "head":
            # A migration that rebuilds a table on SQLite (batch_alter_table copies it)
            # drops its triggers: the rollups' are put back whatever the migrations did.
            rollups.install(conn)


# The newest migration (ticketstore/migrations/versions); a test keeps it equal to
# Alembic's head, so starting needs no look at the migration scripts.
SCHEMA_HEAD = "0012_outbox_domain"


def ensure_schema(engine: Engine) -> None:
    """Create/upgrade SQLite on first use and after an update; others need `db upgrade`.

    One query on `alembic_version` per start; running Alembic on every pipe start is
    not cheap. A database behind this code would fail its inserts on every message (the
    MTA retrying forever), so it is refused up front with the command that fixes it; one
    ahead of this code (a newer ticketgate on another host upgraded it) is refused with
    `SchemaTooNew`: this host needs upgrading, and `db upgrade` here could not do it.
    """
    try:
        with engine.connect() as conn:
            current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except (sa_exc.OperationalError, sa_exc.ProgrammingError):
        if "alembic_version" in inspect(engine).get_table_names():
            raise  # the table is there: a real failure, not a missing schema
        current = None
    if current == SCHEMA_HEAD:
        return
    if current is not None and not _known_revision(current):
        raise SchemaTooNew(current)
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        return
    if current is None:
        raise StoreUnavailable("database schema missing: run `ticketgate db upgrade`")
    raise StoreUnavailable(f"database schema is at {current}, this version needs "
                           f"{SCHEMA_HEAD}: run `ticketgate db upgrade`")


def _known_revision(revision: str) -> bool:
    """Is `revision` one of our migrations? (Read only when the schema is not at head.)"""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return revision in {s.revision for s in script.walk_revisions()}


def is_transient(exc: BaseException) -> bool:
    """Would retrying later plausibly succeed? Locked/down database, full disk, I/O errors."""
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError) and exc.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ECONNREFUSED, errno.EROFS
    )
