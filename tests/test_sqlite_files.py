"""The files SQLite creates beside the database (`-wal`, `-shm`) get the database file's
owner and mode, so an admin who runs a command as root does not lock the gateway's user
out of its own database (docs/operations.md, "Files and ownership")."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.pipe_helpers import ticketgate, write_config
from ticketstore.db import make_engine, upgrade

OWNER = "nobody"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_wal_and_shm_created_by_root_belong_to_the_database_files_owner(tmp_path: Path) -> None:
    db = tmp_path / "tg.db"
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()  # the last connection closes: SQLite removes -wal and -shm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tg.db"]
    pw = pwd.getpwnam(OWNER)
    shutil.chown(db, OWNER, pw.pw_gid)
    os.chmod(db, 0o640)

    # As root, through the gateway's engine (a write) and through the CLI (a read).
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        for name in ("tg.db-wal", "tg.db-shm"):
            st = (tmp_path / name).stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (pw.pw_uid, pw.pw_gid, 0o640)
    finally:
        engine.dispose()
    listed = ticketgate(write_config(tmp_path, url), "tickets", "list")
    assert listed.returncode == 0, listed.stderr
    for path in tmp_path.glob("tg.db*"):
        assert path.stat().st_uid == pw.pw_uid, path
