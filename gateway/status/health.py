"""/healthz: is mail being stored, and is anything piling up that needs an admin?

Checks, each cheap enough for a monitoring system polling every few seconds:
- database: it answers a query (the failure names the cause, gateway/causes.py);
- intake: deliveries are not temp-failing: fewer than `[status] max_tempfail_streak`
  451s in a row, and at most `max_tempfail_rate` of the deliveries within
  `tempfail_window` seconds (judged from 10 deliveries on);
- outbox: the backlog (pending + sending) is at most `max_outbox_backlog`, and no
  message has failed `max_outbox_attempts` attempts in a row (the smarthost refuses or
  is down);
- spool: the quarantine spool holds at most `max_spool_files` messages (default 0: any
  quarantined message is a bug to look at);
- rules: the last reload of the rule files worked (else the old rules are in force);
- workers: every intake worker process serves (one that is restarting, was never ready,
  or stopped answering its master's pings gets no connections: the host runs short).
- autoresponse: no answer was stopped by the site's or a domain's hourly limit in the
  last hour (a flood of forged senders, autoresponse/limits.py).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from autoresponse.limits import flood_suppressions
from gateway.config import StatusConfig
from gateway.tempfails import MIN_DELIVERIES_FOR_RATE, TempfailTracker

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
    engine: Engine, spool_dir: Path, max_backlog: int, max_spool: int,
    status: StatusConfig | None = None, tempfails: TempfailTracker | None = None,
    rules: dict[str, Any] | None = None, workers: list[dict[str, Any]] | None = None,
) -> list[Check]:
    """Run every check; a failing database does not hide the others."""
    from gateway.causes import cause_of

    status = status or StatusConfig()
    checks: list[Check] = []
    backlog: int | None = None
    stuck = 0
    floods: dict[str, int] | None = None
    try:
        with read_only(engine) as conn:
            conn.execute(select(1)).scalar_one()
            floods = flood_suppressions(conn, dt.datetime.now(dt.UTC))
            backlog = int(conn.execute(
                select(func.count()).select_from(O)
                .where(O.c.state.in_(("pending", "sending")))
            ).scalar_one())
            if status.max_outbox_attempts:
                stuck = int(conn.execute(
                    select(func.count()).select_from(O)
                    .where(O.c.state.in_(("pending", "sending")),
                           O.c.attempts >= status.max_outbox_attempts)
                ).scalar_one())
        checks.append(Check("database", True, f"{engine.dialect.name} answers"))
    except Exception as exc:
        # The cause: the database's own message and where it is, never SQL or a password.
        checks.append(Check("database", False, cause_of(exc, engine.url).description))
    if tempfails is not None:
        checks.append(_intake_check(tempfails, status))
    if backlog is None:
        checks.append(Check("outbox", False, "unknown (database unavailable)"))
    elif stuck:
        checks.append(Check("outbox", False,
                            f"{stuck} message(s) failed {status.max_outbox_attempts} or more "
                            "attempts: the smarthost refuses or is down (`ticketgate outbox "
                            "list` shows the errors)"))
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
    if rules is not None:
        errors = rules.get("errors") or []
        checks.append(Check("rules", not errors,
                            f"{rules.get('count', '?')} rules loaded" if not errors else
                            f"the last reload failed ({len(errors)} problem(s), the previous "
                            f"rules are in force): {errors[0]}"))
    if workers:  # none without worker processes (`[lmtp] workers = 1`)
        idle = [str(w["index"]) for w in workers if not w["ready"]]
        serving = f"{len(workers) - len(idle)} of {len(workers)} intake workers serve"
        checks.append(Check("workers", not idle, serving if not idle else
                            f"{serving}; not serving: {', '.join(idle)} (restarting, "
                            "starting or not answering: see the status page and the log)"))
    return checks


def _intake_check(tempfails: TempfailTracker, status: StatusConfig,
                  now: float | None = None) -> Check:
    state = tempfails.state(status.tempfail_window, now)
    window = f"{status.tempfail_window:g} s"
    if status.max_tempfail_streak and state.streak >= status.max_tempfail_streak:
        return Check("intake", False, f"the last {state.streak} deliveries were answered 451 "
                                      "(\"Latest errors\" on the status page names the cause)")
    if (status.max_tempfail_rate < 1.0 and state.total >= MIN_DELIVERIES_FOR_RATE
            and state.failed > status.max_tempfail_rate * state.total):
        return Check("intake", False, f"{state.failed} of {state.total} deliveries in the last "
                                      f"{window} were answered 451")
    return Check("intake", True, f"{state.failed} of {state.total} deliveries in the last "
                                 f"{window} answered 451")


def health_document(checks: list[Check]) -> dict[str, Any]:
    failing = [c.name for c in checks if not c.ok]
    return {
        "status": "fail" if failing else "ok",
        "failing": failing,
        "checks": {c.name: c.as_dict() for c in checks},
    }
