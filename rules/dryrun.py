"""`rules test`: what would happen to a message, explained, without changing anything.

The message goes through the same parse/classify/route steps as real mail (the intake's
`prepare`, which touches no database). The ticket it would thread onto is looked up with
the intake's own threading code inside a transaction that is rolled back; a database
that does not exist yet is not created (the answer is then "new ticket").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Problem
from .evaluate import Decision, evaluate
from .model import RuleSet
from .reader import check_rules
from .router import RuleRouter

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.envelope import Envelope
    from gateway.intake import Prepared


@dataclass
class DryRun:
    rules_dir: str
    ruleset: RuleSet
    problems: list[Problem]
    prepared: Prepared
    decision: Decision
    queue: str
    queue_source: str
    ticket: dict[str, Any] | None  # the ticket a follow-up would land on
    ticket_note: str
    auto_response: bool
    auto_response_why: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        r = self.decision.route
        p = self.prepared
        return {
            "rules_dir": self.rules_dir,
            "rule_count": len(self.ruleset.rules),
            "problems": [str(x) for x in self.problems],
            "message": {"from": p.msg.from_address, "subject": p.msg.subject,
                        "message_id": p.message_id, "size": len(p.raw),
                        "classification": sorted(p.classification.labels),
                        "classification_reasons": list(p.classification.reasons)},
            "rules": [t.as_dict() for t in self.decision.trace],
            "route": {"queue": self.queue, "queue_source": self.queue_source,
                      "priority": r.priority, "state": r.state, "tags": list(r.tags),
                      "customer": r.customer, "thread_key": r.thread_key,
                      "ignore": r.ignore, "no_auto_response": r.no_auto_response,
                      "matched": list(r.matched)},
            "ticket": self.ticket, "ticket_note": self.ticket_note,
            "auto_response": self.auto_response, "auto_response_why": self.auto_response_why,
            "notes": self.notes,
        }


def dry_run(config: Config, raw: bytes, envelope: Envelope) -> DryRun:
    from gateway.intake import Intake

    rules_dir = config.path(config.rules.dir)
    ruleset, problems = check_rules(rules_dir, config.queue_names, config.rules.max_match_chars)
    intake = Intake(config, None, router=RuleRouter(ruleset))  # type: ignore[arg-type]
    p = intake.prepare(raw, envelope)
    decision = evaluate(ruleset, p.msg, p.envelope, p.classification)
    route = decision.route
    if route.queue:
        queue, source = route.queue, f"set by rule '{_setter(decision, 'queue')}'"
    else:
        source = ("from the recipients" if p.queue != config.tickets.default_queue
                  else "the default queue (no recipient matched a queue address)")
        queue = p.queue
    notes: list[str] = []
    ticket, note = (None, "ignored by a rule: nothing would be stored") if route.ignore \
        else _lookup(config, intake, p, queue, notes)
    ar, why = _auto_response(config, p, decision, queue, ticket)
    return DryRun(str(rules_dir), ruleset, problems, p, decision, queue, source, ticket, note,
                  ar, why, notes)


def _setter(decision: Decision, field_: str) -> str:
    for t in reversed(decision.trace):
        if field_ in t.applied:
            return t.rule
    return "?"


def _lookup(
    config: Config, intake: Any, p: Prepared, queue: str, notes: list[str]
) -> tuple[dict[str, Any] | None, str]:
    new = f"new ticket in {queue}"
    url = config.database_url
    if (url.startswith("sqlite:///") and ":memory:" not in url
            and not Path(url.removeprefix("sqlite:///")).exists()):
        return None, f"{new} (there is no database yet)"
    from sqlalchemy import inspect

    from ticketstore.db import make_engine, make_sessionmaker

    engine = make_engine(url, config.database.busy_timeout, 1)
    try:
        if not inspect(engine).has_table("tickets"):
            return None, f"{new} (the database has no schema yet)"
        factory = make_sessionmaker(engine)
        with factory() as session:
            try:
                t = intake._find_ticket(session, p)
                found = None if t is None else {
                    "number": t.number, "state": t.state, "queue": t.queue.name,
                    "title": t.title, "thread_key": t.thread_key}
            finally:
                session.rollback()
    except Exception as exc:  # a dry run must still explain the rules
        notes.append(f"ticket lookup failed: {type(exc).__name__}: {exc}")
        return None, f"{new} (could not look up existing tickets)"
    finally:
        engine.dispose()
    if found is None:
        return None, new
    hook = config.tickets.hook
    if found["state"] == "closed":
        policy = config.queue(found["queue"]).follow_up_closed
        what = {"reopen": "reopens it", "reject": "is stored but rejected (auto-reject)",
                "new-ticket": f"becomes a new ticket in {queue} linked to it"}[policy]
        return found, (f"follow-up to closed [{hook}{found['number']}] in {found['queue']}: "
                       f"{what} (follow_up_closed = {policy})")
    return found, f"follow-up to [{hook}{found['number']}] ({found['state']}) in {found['queue']}"


def _auto_response(
    config: Config, p: Prepared, decision: Decision, queue: str, ticket: dict[str, Any] | None
) -> tuple[bool, str]:
    """Yes/no and why, from the config, the classification and the rules.

    The auto-responder decides for real and also applies checks this cannot see
    (per-recipient daily limits, noreply-like senders, our own addresses).
    """
    route = decision.route
    if route.ignore:
        return False, "the message is ignored"
    if not config.autoresponse.enabled:
        return False, "[autoresponse] enabled = false"
    if route.no_auto_response:
        return False, f"no_auto_response set by rule '{_setter(decision, 'no_auto_response')}'"
    if p.classification.labels:
        return False, "classified as automatic mail: " + "; ".join(p.classification.reasons)
    target_queue = ticket["queue"] if ticket else queue
    qc = config.queue(target_queue)
    if not qc.auto_response:
        return False, f"queue {target_queue} has auto_response = false"
    if ticket is not None and not qc.follow_up_ack:
        return False, f"follow-up, and queue {target_queue} has follow_up_ack = false"
    local = p.msg.from_address.partition("@")[0]
    if re.match(config.autoresponse.noreply_pattern, local, re.IGNORECASE):
        return False, f"sender {p.msg.from_address} looks like a robot (noreply_pattern)"
    return True, ("not automatic mail, no rule suppressed it (the auto-responder may still "
                  f"hold back for the {config.autoresponse.max_per_day}/day limit)")
