"""Fixtures: a fresh database per test on SQLite and (when available) PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.config import Config
from gateway.intake import Intake
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


def _fresh_pg_database(admin_url: str) -> Iterator[str]:
    name = f"tg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin.url.set(database=name)
    try:
        yield base.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tg.db'}"
        return
    admin = request.getfixturevalue("pg_admin_url")
    yield from _fresh_pg_database(admin)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tg.db'}"


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    yield from _fresh_pg_database(pg_admin_url)


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
