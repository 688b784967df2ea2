"""The evaluator: a message in, a `Route` and the reasons for it out. Pure, no I/O.

Rules are evaluated in order; a rule matches when all its conditions hold (a rule
without conditions matches everything). Conflict policy: the first matching rule that
sets a field wins unless a later matching rule says `override = true`; tags add up;
`stop = true` ends evaluation after that rule.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any

from gateway.intake.ports import Route
from gateway.mail.classify import Classification
from gateway.mail.envelope import Envelope
from gateway.mail.parse import ParsedMessage
from gateway.mail.verdict import NO_VERDICT, SenderVerdict

from .conditions import Condition, Verdict
from .model import Rule, RuleSet
from .view import MessageView

MATCHED, NOT_MATCHED, SKIPPED = "matched", "not matched", "skipped"


@dataclasses.dataclass(frozen=True)
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
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
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


def _match(rule: Rule, view: MessageView) -> tuple[list[tuple[Condition, Verdict]], bool]:
    """The verdicts up to the deciding one, and whether the rule matches."""
    seen = []
    for cond in rule.conditions:
        verdict = cond.test(view)
        seen.append((cond, verdict))
        if not cond.holds(verdict):
            return seen, False
    return seen, True


def _captures(seen: list[tuple[Condition, Verdict]]) -> dict[str, str]:
    """Named groups of the plain conditions' regex matches (a negated one matched nothing)."""
    return {k: v for cond, verdict in seen if not cond.negate
            for k, v in verdict.captures.items()}


def _reason(seen: list[tuple[Condition, Verdict]]) -> str:
    return ("; ".join(f"{cond.key}: {verdict.why()}" for cond, verdict in seen)
            or "no conditions: matches every message")


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
        return Route(**self.values, tags=tuple(self.tags), matched=tuple(self.matched))


def _decide(ruleset: RuleSet, view: MessageView, explain: bool) -> Decision:
    """Routing (explain=False) tests only the rules the domain index leaves and builds no
    trace; `rules test` tests every rule and says why each did or did not match."""
    out = _Builder(view)
    trace: list[RuleTrace] = []
    rules = ruleset.rules
    order = range(len(rules)) if explain else ruleset.domain_index.candidates(view.from_domain)
    stopped_by: str | None = None
    for i in order:
        rule = rules[i]
        if stopped_by is not None:
            trace.append(RuleTrace(rule.name, rule.file, rule.line, SKIPPED,
                                   f"not evaluated: rule '{stopped_by}' has stop = true"))
            continue
        seen, matched = _match(rule, view)
        if not matched:
            if explain:
                trace.append(RuleTrace(rule.name, rule.file, rule.line, NOT_MATCHED,
                                       _reason(seen[-1:])))
            continue
        applied, overruled = out.apply(rule, _captures(seen))
        if explain:
            trace.append(RuleTrace(rule.name, rule.file, rule.line, MATCHED, _reason(seen),
                                   tuple(applied), tuple(overruled)))
        if rule.actions.stop:
            if not explain:
                break
            stopped_by = rule.name
    return Decision(out.route(), tuple(trace))


def route_only(
    ruleset: RuleSet, msg: ParsedMessage, envelope: Envelope, classification: Classification,
    verdict: SenderVerdict = NO_VERDICT,
) -> Route:
    """The route, without reasons: what the intake asks for every message."""
    view = MessageView(msg, envelope, classification, ruleset.max_match_chars, verdict)
    return _decide(ruleset, view, explain=False).route


def evaluate(
    ruleset: RuleSet, msg: ParsedMessage, envelope: Envelope, classification: Classification,
    verdict: SenderVerdict = NO_VERDICT,
) -> Decision:
    """The route and, for every rule, whether it matched and why (for `rules test`)."""
    view = MessageView(msg, envelope, classification, ruleset.max_match_chars, verdict)
    return _decide(ruleset, view, explain=True)
