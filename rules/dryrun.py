"""`rules test`: what would happen to a message, explained, without changing anything.

The message goes through the same parse/classify/route steps as real mail (the intake's
`prepare`, which touches no database). The ticket it would thread onto and what becomes
of it are decided by the intake's own functions (`followup.find_follow_up`, `policy.decide`),
and the auto-response verdict comes from the auto-responder's own suppression table,
inside a transaction that is rolled back. A database that does not exist yet is not
created (the answer is then "new ticket").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.intake.outcome import Outcome

from .errors import Problem
from .evaluate import Decision, evaluate
from .model import RuleSet
from .reader import check_rules
from .router import RuleRouter

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.config import Config
    from gateway.intake.policy import Decision as PolicyDecision
    from gateway.intake.prepared import Prepared
    from gateway.mail.envelope import Envelope
    from ticketstore.snapshots import TicketSnapshot


@dataclass
class DryRun:
    rules_dir: str
    ruleset: RuleSet
    problems: list[Problem]
    prepared: Prepared
    decision: Decision
    queue: str = ""
    queue_source: str = ""
    ticket: dict[str, Any] | None = None  # the existing ticket a follow-up would land on
    ticket_note: str = ""
    # How the message was linked (proof / number / bounce / thread-key), who sent it, and
    # the stranger policy that applied: None when it names no stored ticket.
    threading: dict[str, Any] | None = None
    auto_response: bool = False
    auto_response_why: str = ""
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
                        "classification_reasons": list(p.classification.reasons),
                        "verdict": dataclasses.asdict(p.verdict)},
            "rules": [t.as_dict() for t in self.decision.trace],
            "route": {"queue": self.queue, "queue_source": self.queue_source,
                      "priority": r.priority, "state": r.state, "tags": list(r.tags),
                      "customer": r.customer, "thread_key": r.thread_key,
                      "ignore": r.ignore, "no_auto_response": r.no_auto_response,
                      "matched": list(r.matched)},
            "ticket": self.ticket, "ticket_note": self.ticket_note,
            "threading": self.threading,
            "auto_response": self.auto_response, "auto_response_why": self.auto_response_why,
            "notes": self.notes,
        }


def dry_run(config: Config, raw: bytes, envelope: Envelope) -> DryRun:
    from gateway.intake.core import Intake

    rules_dir = config.path(config.rules.dir)
    ruleset, problems = check_rules(rules_dir, config.queue_names, config.rules.max_match_chars)
    intake = Intake(config, None, router=RuleRouter(ruleset))  # type: ignore[arg-type]
    p = intake.prepare(raw, envelope)
    decision = evaluate(ruleset, p.msg, p.envelope, p.classification, p.verdict)
    result = DryRun(str(rules_dir), ruleset, problems, p, decision)
    route = decision.route
    if route.queue:
        result.queue = route.queue
        result.queue_source = f"set by rule '{_setter(decision, 'queue')}'"
    else:
        result.queue = p.queue
        result.queue_source = (
            "from the recipients" if p.queue != config.tickets.default_queue
            else "the default queue (no recipient matched a queue address)")
    if route.ignore:
        result.ticket_note = (f"ignored by rule '{_setter(decision, 'ignore')}': accepted and "
                              "dropped, nothing stored")
        result.auto_response_why = "the message is ignored"
        return result
    _with_database(config, result)
    return result


def _setter(decision: Decision, field_: str) -> str:
    for t in reversed(decision.trace):
        if field_ in t.applied:
            return t.rule
    return "?"


def _with_database(config: Config, result: DryRun) -> None:
    """Look up the ticket and the auto-response verdict; read-only, rolled back."""
    url = config.database_url
    if (url.startswith("sqlite:///") and ":memory:" not in url
            and not Path(url.removeprefix("sqlite:///")).exists()):
        _decide(config, result, None, "there is no database yet")
        return
    from sqlalchemy import inspect

    from ticketstore.db import make_engine

    engine = make_engine(url, config.database.busy_timeout, 1)
    try:
        if not inspect(engine).has_table("tickets"):
            _decide(config, result, None, "the database has no schema yet")
            return
        # A read-only look: a deferred transaction never waits for (or blocks) writers.
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            try:
                _decide(config, result, conn, "")
            finally:
                conn.rollback()
    except Exception as exc:  # a dry run must still explain the rules
        result.notes.append(f"database lookup failed: {type(exc).__name__}: {exc}")
        _decide(config, result, None, "could not look up existing tickets")
    finally:
        engine.dispose()


def _decide(config: Config, result: DryRun, conn: Connection | None, why_no_db: str) -> None:
    """The intake's own follow-up lookup, stranger and closed-ticket policies, explained."""
    from gateway.intake.followup import find_follow_up
    from gateway.intake.participants import ParticipantRules
    from gateway.intake.policy import decide
    from gateway.intake.recipients import QueueMap

    p = result.prepared
    found = None
    if conn is not None:
        rules = ParticipantRules(config, QueueMap.from_config(config))
        found = find_follow_up(conn, config.tickets, rules, p)
    d = decide(config, p, found)
    if found is None:
        result.ticket_note = f"new ticket in {d.queue}" + (f" ({why_no_db})" if why_no_db else "")
    else:
        result.ticket = {"number": found.ticket.number, "state": found.ticket.state,
                         "queue": found.ticket.queue.name, "title": found.ticket.title,
                         "thread_key": found.ticket.thread_key}
        result.threading = {"path": found.path, "why": found.why,
                            "sender": found.sender.why if found.sender else None,
                            "stranger_policy": d.stranger_policy}
        result.ticket_note = _note(config, d, p)
    if d.outcome is Outcome.HELD:
        result.auto_response, result.auto_response_why = False, "a held message is not answered"
        return
    ticket = d.ticket or _unsaved_ticket(config, p, d.queue, d.refused_new)
    result.auto_response, result.auto_response_why = _auto_response(
        config, result, conn, ticket, d)


def _note(config: Config, d: PolicyDecision, p: Prepared) -> str:
    """What becomes of a message that names a stored ticket, in one line."""
    from gateway.intake.policy import reopens

    assert d.found is not None
    found = d.found.ticket
    tag = f"[{config.tickets.hook}{found.number}]"
    where = f"{tag} ({found.state}) in {found.queue.name}"
    policy = f"stranger_follow_up = {d.stranger_policy}"
    if d.stranger_policy == "new-ticket":
        return (f"a stranger's follow-up to {tag} by number: new ticket in {d.queue}, "
                f"linked to {tag}; nothing added to {tag} ({policy})")
    if d.stranger_policy == "accept":
        return (f"a stranger's follow-up to {where}: appended, flagged as a stranger's, "
                f"changes nothing of the ticket ({policy})")
    if d.stranger_policy == "hold":
        return (f"a stranger's follow-up to {tag}: held, not threaded, until an admin "
                f"releases or discards it with `ticketgate held` ({policy})")
    if d.linked_to is not None:
        return f"new ticket in {d.queue}, linked to closed {tag}"
    if d.outcome is Outcome.REJECTED:
        return (f"follow-up to closed {tag} in {found.queue.name}: "
                "stored, then rejected (follow_up_closed = reject)")
    if d.reopen:
        return (f"follow-up to closed {tag} in {found.queue.name}: "
                "reopens it (follow_up_closed = reopen)")
    if found.state == "closed" and not reopens(p.classification):
        return (f"follow-up to {where}: a bounce or out-of-office reply, "
                "so it does not reopen it")
    return f"follow-up to {where}"


def _unsaved_ticket(config: Config, p: Prepared, queue: str, refused: bool) -> TicketSnapshot:
    """The ticket the intake would open, numbered "(new)"."""
    from gateway.intake.store import ticket_values
    from ticketstore.snapshots import QueueSnapshot, TicketSnapshot

    values = ticket_values(config.tickets, p, "(new)", dt.datetime.now(dt.UTC), refused)
    return TicketSnapshot(id=0, queue_id=0, **values, queue=QueueSnapshot(0, queue))


def _auto_response(
    config: Config, result: DryRun, conn: Connection | None, ticket: TicketSnapshot,
    d: PolicyDecision,
) -> tuple[bool, str]:
    """Yes/no and why, from the auto-responder's own suppression checks."""
    from autoresponse import suppress
    from autoresponse.autoresponder import AutoResponder
    from gateway.intake.ports import StoredMessage
    from gateway.intake.store import article_values
    from ticketstore.snapshots import ArticleSnapshot

    p = result.prepared
    if not config.autoresponse.enabled:
        return False, "[autoresponse] enabled = false"
    qcfg = config.queue(ticket.queue.name)
    responder = AutoResponder(config)
    now = dt.datetime.now(dt.UTC)
    stored = StoredMessage(
        msg=p.msg, envelope=p.envelope, classification=p.classification, route=p.route,
        ticket=ticket, article=ArticleSnapshot(id=0, **article_values(p, ticket.id, now)),
        outcome=d.outcome, closed_policy=d.closed_policy, queue_refused_new=d.refused_new,
        now=now, sender_is_participant=not d.from_stranger,
    )
    event = responder.customer_event(stored, qcfg)
    if event is None:  # enabled, and no duplicate or ignored mail gets here: a follow-up
        return False, f"a follow-up, and queue {qcfg.name} has follow_up_ack = false"
    rcpt = responder.recipient(stored)
    check = suppress.Check(conn, stored, config, rcpt,  # type: ignore[arg-type]
                           responder.system_addresses, responder.noreply)
    verdict = suppress.suppression(
        check, frozenset() if conn is not None else suppress.DATABASE_CHECKS)
    if verdict is not None:
        return False, f"{event} suppressed ({verdict[0]}): {verdict[1]}"
    if not responder.from_address(qcfg):
        return False, "no queue address and no autoresponse.from_address to send from"
    limit = "" if conn is not None else " (answer limits not checked: no database)"
    return True, f"{event} auto-response to {rcpt}{limit}"
