"""/healthz: is mail being stored, and is anything piling up that needs an admin?

Four checks, each cheap enough for a monitoring system polling every few seconds:
the database answers a query, the outbox backlog (pending + sending) is at most
`[status] max_outbox_backlog`, the quarantine spool holds at most
`[status] max_spool_files` messages (default 0: any quarantined message is a bug to look at),
and no answer was stopped by the site's or a domain's hourly limit in the last hour
(a flood of forged senders, autoresponse/limits.py).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from autoresponse.limits import flood_suppressions

from .queries import O, read_only


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


def count_spool(spool_dir: Path) -> int:
    try:
        return sum(
            1 for e in os.scandir(spool_dir / "failed")
            if e.name.endswith(".eml") and not e.name.startswith(".")
        )
    except (FileNotFoundError, NotADirectoryError):
        return 0


def run_checks(
    engine: Engine, spool_dir: Path, max_backlog: int, max_spool: int
) -> list[Check]:
    """Run every check; a failing database does not hide the spool check."""
    checks: list[Check] = []
    backlog: int | None = None
    floods: dict[str, int] | None = None
    try:
        with read_only(engine) as conn:
            conn.execute(select(1)).scalar_one()
            floods = flood_suppressions(conn, dt.datetime.now(dt.UTC))
            backlog = int(conn.execute(
                select(func.count()).select_from(O)
                .where(O.c.state.in_(("pending", "sending")))
            ).scalar_one())
        checks.append(Check("database", True, f"{engine.dialect.name} answers"))
    except Exception as exc:
        # The type only: driver messages can carry host names and SQL.
        checks.append(Check("database", False, f"{engine.dialect.name}: {type(exc).__name__}"))
    if backlog is None:
        checks.append(Check("outbox", False, "unknown (database unavailable)"))
    else:
        checks.append(Check("outbox", backlog <= max_backlog,
                            f"{backlog} pending (limit {max_backlog})"))
    if floods is not None:  # the site's or a domain's answer limit reached this hour
        hit = [f"{check} reached ({n} suppressed)" for check, n in floods.items() if n]
        checks.append(Check("autoresponse", not hit,
                            "; ".join(hit) or "no answer limit reached in the last hour"))
    spooled = count_spool(spool_dir)
    checks.append(Check("spool", spooled <= max_spool,
                        f"{spooled} quarantined (limit {max_spool})"))
    return checks


def health_document(checks: list[Check]) -> dict[str, Any]:
    failing = [c.name for c in checks if not c.ok]
    return {
        "status": "fail" if failing else "ok",
        "failing": failing,
        "checks": {c.name: c.as_dict() for c in checks},
    }
