"""Warnings for rules that load but let a stranger do what an admin would not want.

`From:` is written by the sender. A rule that closes tickets on a From alone lets anyone
close a customer's ticket (a forged `From: nagios@…` with a RECOVERY subject and the
ticket's number); it needs `aligned = true` (or `dmarc = "pass"`) and an exact `from`
(any domain can sign its own mail, so `nagios@*` proves nothing). `rules check` prints
these as warnings: the rules still load, as they did.
"""

from __future__ import annotations

from .conditions import Aligned, Glob, Result
from .model import Rule, RuleSet


def _verified(rule: Rule) -> bool:
    return any((isinstance(c, Aligned) and c.wanted and not c.negate)
               or (isinstance(c, Result) and c.field == "dmarc" and not c.negate
                   and c.results == ("pass",))
               for c in rule.conditions)


def _exact_sender(rule: Rule) -> bool:
    return any(isinstance(c, Glob) and c.field == "from" and not c.negate
               and not any(ch in p for p in c.patterns for ch in "*?[")
               for c in rule.conditions)


def identity_warnings(ruleset: RuleSet) -> list[str]:
    """`file:line: rule 'name': warning: ...` for each rule that closes tickets on the
    sender's word."""
    out = []
    for rule in ruleset.rules:
        if rule.actions.state != "closed":
            continue
        where = f"{rule.file}:{rule.line}: rule {rule.name!r}: warning:"
        if not _verified(rule):
            out.append(f"{where} closes tickets without `aligned = true`: anyone can write "
                       "its From (docs/rules.md, \"Rules that change state need a verified "
                       "sender\")")
        elif not _exact_sender(rule):
            out.append(f"{where} closes tickets for a From pattern, not an exact address: "
                       "any domain can sign its own mail")
    return out
