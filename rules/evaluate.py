"""The evaluator: a message in, a `Route` and the reasons for it out. Pure, no I/O.

Rules are evaluated in order; a rule matches when all its conditions hold (a rule
without conditions matches everything). Conflict policy: the first matching rule that
sets a field wins unless a later matching rule says `override = true`; tags add up;
`stop = true` ends evaluation after that rule.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model import Rule, RuleSet
from .route import Route
from .view import MessageView

if TYPE_CHECKING:
    from gateway.classify import Classification
    from gateway.envelope import Envelope
    from gateway.parse import ParsedMessage

MATCHED, NOT_MATCHED, SKIPPED = "matched", "not matched", "skipped"

@dataclass(frozen=True)
class RuleTrace:
    """What happened to one rule: matched or not, and the condition that decided it."""

    rule: str
    file: str
    line: int
    status: str  # MATCHED / NOT_MATCHED / SKIPPED
    reason: str
    # Fields this rule set, and those it tried to set but an earlier rule had already set.
    applied: tuple[str, ...] = ()
    overruled: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "file": self.file, "line": self.line,
                "status": self.status, "reason": self.reason,
                "applied": list(self.applied), "overruled": list(self.overruled)}

@dataclass(frozen=True)
class Decision:
    route: Route
    trace: tuple[RuleTrace, ...]

def _fill(template: str, captures: Mapping[str, str], view: MessageView) -> str:
    values = {"from": view.from_address, "from_domain": view.from_domain, **captures}
    out = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            out.append(str(values.get(field) or ""))
    return "".join(out).strip()

def _check(rule: Rule, view: MessageView) -> tuple[bool, str, dict[str, str]]:
    captures: dict[str, str] = {}
    reasons = []
    for cond in rule.conditions:
        holds, why, caps = cond.evaluate(view)
        if not holds:
            return False, why, {}
        captures.update(caps)
        reasons.append(why)
    if not reasons:
        return True, "no conditions: matches every message", captures
    return True, "; ".join(reasons), captures

def evaluate(
    ruleset: RuleSet,
    msg: ParsedMessage,
    envelope: Envelope,
    classification: Classification,
    explain: bool = True,
) -> Decision:
    view = MessageView(msg, envelope, classification, ruleset.max_match_chars)
    values: dict[str, Any] = {}
    tags: list[str] = []
    matched: list[str] = []
    trace: list[RuleTrace] = []
    stopped_by: str | None = None
    for rule in ruleset.rules:
        if stopped_by is not None:
            if not explain:
                break
            trace.append(RuleTrace(rule.name, rule.file, rule.line, SKIPPED,
                                   f"not evaluated: rule '{stopped_by}' has stop = true"))
            continue
        ok, why, captures = _check(rule, view)
        if not ok:
            if explain:
                trace.append(RuleTrace(rule.name, rule.file, rule.line, NOT_MATCHED, why))
            continue
        matched.append(rule.name)
        a = rule.actions
        applied: list[str] = []
        overruled: list[str] = []
        for f in a.set_fields():
            if f in values and not a.override:
                overruled.append(f)
                continue
            value = getattr(a, f)
            if f in ("thread_key", "customer"):
                value = _fill(value, captures, view) or None
            values[f] = value
            applied.append(f)
        for t in a.tags:
            if t not in tags:
                tags.append(t)
        if a.tags:
            applied.append("tags")
        if a.stop:
            stopped_by = rule.name
            applied.append("stop")
        if explain:
            trace.append(RuleTrace(rule.name, rule.file, rule.line, MATCHED, why,
                                   tuple(applied), tuple(overruled)))
    route = Route(
        queue=values.get("queue"),
        priority=values.get("priority"),
        state=values.get("state"),
        tags=tuple(tags),
        customer=values.get("customer"),
        ignore=bool(values.get("ignore", False)),
        no_auto_response=bool(values.get("no_auto_response", False)),
        thread_key=values.get("thread_key"),
        matched=tuple(matched),
    )
    return Decision(route, tuple(trace))
