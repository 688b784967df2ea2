"""Before `serve` says `ready`: can it write where it must?

A daemon that starts on a read-only database answers 451 to every message while its log
says `ready` and systemd reports it running. So at start it writes: a transaction that
changes a row and is rolled back (the database, its journal and WAL files, the disk),
and a file created and removed in the quarantine spool. A failure is one line naming the
cause (gateway/causes.py) and a sysexits code (see `exit_code_for`, docs/operations.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy import Engine

from gateway import causes
from gateway.causes import Cause, cause_of
from gateway.config import Config
from gateway.sysexits import EX_CANTCREAT, EX_CONFIG, EX_TEMPFAIL, EX_UNAVAILABLE

# What the admin must do decides the code: fix ownership or permissions (73), wait or
# free space (75: systemd's Restart= tries again), fix the set-up (78), bring the
# database up (69).
_EXIT_CODES = {
    causes.READ_ONLY: EX_CANTCREAT,
    causes.CANNOT_OPEN: EX_CANTCREAT,
    causes.PERMISSION: EX_CANTCREAT,
    causes.FS_READ_ONLY: EX_CANTCREAT,
    causes.DISK_FULL: EX_TEMPFAIL,
    causes.LOCKED: EX_TEMPFAIL,
    causes.BUSY: EX_TEMPFAIL,
    causes.IO_ERROR: EX_TEMPFAIL,
    causes.SCHEMA: EX_CONFIG,
    causes.SCHEMA_NEWER: EX_CONFIG,
    causes.LOGIN_REFUSED: EX_CONFIG,
}


class CannotStart(Exception):
    """`serve` must not start: `str()` says why, `exit_code` is the process's code."""

    def __init__(self, cause: Cause) -> None:
        super().__init__(cause.description)
        self.cause = cause
        self.exit_code = exit_code_for(cause)


def exit_code_for(cause: Cause) -> int:
    return _EXIT_CODES.get(cause.category, EX_UNAVAILABLE)


def check_database_writable(engine: Engine, config: Config) -> None:
    try:
        with engine.connect() as conn, conn.begin() as tx:
            # A real row change (SQLite takes its write lock and writes its WAL; PostgreSQL
            # refuses it in a read-only transaction), undone at once.
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
            tx.rollback()
    except Exception as exc:
        raise CannotStart(cause_of(exc, config.database_url,
                                   config.database.busy_timeout)) from exc


def check_spool_writable(spool_dir: Path) -> None:
    folder = spool_dir / "failed"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".preflight-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        cause = cause_of(exc)
        raise CannotStart(Cause(cause.category, f"quarantine spool: {cause.description}")) \
            from exc


def check_can_write(engine: Engine, config: Config) -> None:
    check_database_writable(engine, config)
    check_spool_writable(config.path(config.intake.spool_dir))
