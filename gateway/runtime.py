"""Build the configured pieces (store, router, responder, intake) from a Config.

Entry points call these instead of wiring things themselves, so the pipe, the server
and `spool replay` run exactly the same intake.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.intake.core import Intake
from gateway.intake.verify.verifier import Verifier
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
        try:
            ensure_schema(engine)
        except BaseException:
            engine.dispose()  # a refused schema leaves no connection behind
            raise
    return Store(engine, make_sessionmaker(engine))


def open_existing_store(config: Config) -> Store:
    """The store for a command that reads (or edits) what is there: never a new database.

    Without a config file the built-in defaults point at ./var/ticketgate.db, and a
    command run in the wrong folder would create an empty database there.
    """
    note_defaults(config)
    url = config.database_url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            print(f"ticketgate: no database at {path}", file=sys.stderr)
            raise SystemExit(1)
    return open_store(config)


def note_defaults(config: Config) -> None:
    """Say so when a command runs on the built-in defaults: the admin may be in the
    wrong folder, or have forgotten -c."""
    if config.source == "<defaults>":
        print("ticketgate: no config file (-c, $TICKETGATE_CONFIG or ./ticketgate.toml): "
              "using the built-in defaults", file=sys.stderr)


def cli_user() -> str:
    """Who runs a CLI command, for the history: the user behind sudo, else the Unix user."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return f"uid {os.getuid()}"


def build_intake(config: Config, store: Store, verifier: Verifier | None = None) -> Intake:
    """The intake with the configured rules and auto-responder plugged in (and the DKIM
    verifier: the system's DNS unless one is given)."""
    from autoresponse.factory import load_responder
    from rules.loader import load_router

    intake = Intake(config, store.factory, router=load_router(config),
                    responder=load_responder(config), verifier=verifier)
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
