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

from gateway.intake.ports import Route

from .model import Rule, RuleSet
from .view import MessageView

if TYPE_CHECKING:
    from gateway.mail.classify import Classification
    from gateway.mail.envelope import Envelope
    from gateway.mail.parse import ParsedMessage

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
    """Explained: (matched, why, captures); the reason is the deciding condition."""
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


def _holds(rule: Rule, view: MessageView) -> dict[str, str] | None:
    """The routing path: the captures if the rule matches, else None. No strings built."""
    captures: dict[str, str] = {}
    for cond in rule.conditions:  # Condition.holds, inlined: this loop is the hot path
        raw, caps = cond.probe(view)
        if raw is None or raw == cond.negate:
            return None
        if caps and not cond.negate:
            captures.update(caps)
    return captures


class _Builder:
    """Collects the actions of matching rules under the conflict policy."""

    def __init__(self, view: MessageView) -> None:
        self.view = view
        self.values: dict[str, Any] = {}
        self.tags: list[str] = []
        self.matched: list[str] = []

    def apply(self, rule: Rule, captures: Mapping[str, str]) -> tuple[list[str], list[str]]:
        self.matched.append(rule.name)
        a = rule.actions
        applied: list[str] = []
        overruled: list[str] = []
        for f in a.set_fields():
            if f in self.values and not a.override:
                overruled.append(f)
                continue
            value = getattr(a, f)
            if f in ("thread_key", "customer"):
                value = _fill(value, captures, self.view) or None
            self.values[f] = value
            applied.append(f)
        for t in a.tags:
            if t not in self.tags:
                self.tags.append(t)
        if a.tags:
            applied.append("tags")
        if a.stop:
            applied.append("stop")
        return applied, overruled

    def route(self) -> Route:
        v = self.values
        return Route(
            queue=v.get("queue"),
            priority=v.get("priority"),
            state=v.get("state"),
            tags=tuple(self.tags),
            customer=v.get("customer"),
            ignore=bool(v.get("ignore", False)),
            no_auto_response=bool(v.get("no_auto_response", False)),
            thread_key=v.get("thread_key"),
            matched=tuple(self.matched),
        )


NO_ROUTE = Route()


def route_only(
    ruleset: RuleSet, msg: ParsedMessage, envelope: Envelope, classification: Classification
) -> Route:
    """The route without reasons: only the rules the domain index leaves are tested."""
    if not ruleset.rules:  # a site without rule files: the defaults, nothing to look at
        return NO_ROUTE
    view = MessageView(msg, envelope, classification, ruleset.max_match_chars)
    out = _Builder(view)
    rules = ruleset.rules
    for i in ruleset.domain_index.candidates(view.from_domain):
        rule = rules[i]
        captures = _holds(rule, view)
        if captures is None:
            continue
        out.apply(rule, captures)
        if rule.actions.stop:
            break
    return out.route()


def evaluate(
    ruleset: RuleSet,
    msg: ParsedMessage,
    envelope: Envelope,
    classification: Classification,
) -> Decision:
    """The route and, for every rule, whether it matched and why."""
    view = MessageView(msg, envelope, classification, ruleset.max_match_chars)
    out = _Builder(view)
    trace: list[RuleTrace] = []
    stopped_by: str | None = None
    for rule in ruleset.rules:
        if stopped_by is not None:
            trace.append(RuleTrace(rule.name, rule.file, rule.line, SKIPPED,
                                   f"not evaluated: rule '{stopped_by}' has stop = true"))
            continue
        ok, why, captures = _check(rule, view)
        if not ok:
            trace.append(RuleTrace(rule.name, rule.file, rule.line, NOT_MATCHED, why))
            continue
        applied, overruled = out.apply(rule, captures)
        if rule.actions.stop:
            stopped_by = rule.name
        trace.append(RuleTrace(rule.name, rule.file, rule.line, MATCHED, why,
                               tuple(applied), tuple(overruled)))
    return Decision(out.route(), tuple(trace))
