"""Helpers shared by the tests that run `ticketgate` as a subprocess (pipe, CLI, spool)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.support import toml_value

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = "support@helpdesk.example"


def write_config(tmp_path: Path, db_url: str, **sections: dict[str, Any]) -> Path:
    data: dict[str, dict[str, Any]] = {
        "database": {"url": db_url, "busy_timeout": 2.0},
        "intake": {"spool_dir": str(tmp_path / "spool")},
        "pipe": {"handoff_socket": ""},
        # A plain store; the conversation test turns auto-responses on.
        "autoresponse": {"enabled": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    lines = []
    for name, values in data.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for queue, address, policy in [("Support", SUPPORT, "reopen"),
                                   ("Billing", "billing@helpdesk.example", "new-ticket")]:
        lines += ["[[queues]]", f'name = "{queue}"', f'addresses = ["{address}"]',
                  f'follow_up_closed = "{policy}"']
    path = tmp_path / "ticketgate.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def ticketgate(config: Path | None, *args: str, stdin: bytes = b"",
               extra_python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, *extra_python, "-m", "gateway"]
    if config is not None:
        cmd += ["-c", str(config)]
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, env=env,
                          timeout=120, cwd=config.parent if config else ROOT, check=False)


def query(db_url: str, sql: str) -> list[Any]:
    """The rows of `sql`, on a connection of its own (what a subprocess wrote)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()
