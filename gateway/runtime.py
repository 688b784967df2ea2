"""Build the configured pieces (store, router, responder, intake) from a Config.

Entry points call these instead of wiring things themselves, so the pipe, the server
and `spool replay` run exactly the same intake.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.intake.core import Intake
from ticketstore.db import ensure_schema, make_engine, make_sessionmaker

from .config import Config, ConfigError, load_config
from .sysexits import EX_CONFIG


@dataclass
class Store:
    engine: Engine
    factory: sessionmaker[Session]

    def dispose(self) -> None:
        self.engine.dispose()


def open_store(config: Config, create: bool = True) -> Store:
    engine = make_engine(config.database_url, config.database.busy_timeout,
                         config.database.pool_size, config.database.prepared_statements)
    if create:
        ensure_schema(engine)
    return Store(engine, make_sessionmaker(engine))


def build_intake(config: Config, store: Store) -> Intake:
    """The intake with the configured rules and auto-responder plugged in."""
    from autoresponse.factory import load_responder
    from rules.loader import load_router

    intake = Intake(config, store.factory, router=load_router(config),
                    responder=load_responder(config))
    intake.sync_queues()
    return intake


_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<priority>name: message`: journald reads the priority and adds its own timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n ")  # one journal entry per record
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{text}"


def stderr_is_journal(env: dict[str, str] | None = None) -> bool:
    """systemd sets JOURNAL_STREAM to stderr's device:inode when stderr goes to journald."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def load_or_exit(path: str | None) -> Config:
    """Load the config for a CLI command; a bad config is a clear message and exit 78."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"ticketgate: config error: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
