"""Fixtures: a fresh database per test on SQLite and (when available) PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.config import Config
from gateway.intake.core import Intake
from gateway.runtime import Store, open_store
from tests.support import integration_missing, make_config

PG_ENV = "TICKETGATE_TEST_PG_URL"


def _pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = _pg_admin_url()
    if not url:
        integration_missing(f"PostgreSQL (set {PG_ENV})")
    try:
        engine = create_engine(url)  # type: ignore[arg-type]
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        integration_missing(f"PostgreSQL at {PG_ENV} ({type(exc).__name__})")
    return url  # type: ignore[return-value]


class _PgDatabases:
    """Creates test databases and drops them all at the end of the session.

    Dropping a database costs most of a second (a checkpoint); doing it per test made
    PostgreSQL setup/teardown dominate the suite. A migrated template is cloned for
    tests that want a ready schema, so Alembic runs once per session, not per test.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []
        self._template: str | None = None

    def create(self, template: str | None = None) -> str:
        name = f"tg_test_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        self.created.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def migrated(self) -> str:
        """A fresh database with the current schema, cloned from a session template."""
        if self._template is None:
            from ticketstore.db import make_engine, upgrade

            url = self.create()
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()
            self._template = url.rsplit("/", 1)[-1].split("?")[0]
        return self.create(template=self._template)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases(pg_admin_url: str) -> Iterator[_PgDatabases]:
    dbs = _PgDatabases(pg_admin_url)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied per test instead of running Alembic each time."""
    from ticketstore.db import make_engine, upgrade

    path = tmp_path_factory.mktemp("template") / "tg.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # the last connection to close checkpoints and removes the WAL
    assert not path.with_name("tg.db-wal").exists()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new database with the current schema, on each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, tmp_path / "tg.db")
        return f"sqlite:///{tmp_path / 'tg.db'}"
    dbs: _PgDatabases = request.getfixturevalue("pg_databases")
    return dbs.migrated()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tg.db'}"


@pytest.fixture
def pg_url(pg_databases: _PgDatabases) -> str:
    """A new, empty PostgreSQL database (no schema)."""
    return pg_databases.create()


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Config:
    return make_config(tmp_path, db_url)


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    from ticketstore.db import upgrade

    s = open_store(config, create=False)
    upgrade(s.engine)
    yield s
    s.dispose()


@pytest.fixture
def intake(config: Config, store: Store) -> Intake:
    i = Intake(config, store.factory)
    i.sync_queues()
    return i
