"""Skip rules that cannot match before testing them: an index by sender domain.

Most rules of a large site are per-customer `from_domain` rules. A rule with a plain
(not negated) `from_domain` condition can only match mail from those domains, so the
routing path looks up the message's domain and its parent domains and tests only those
rules plus the rules without such a condition, in their original order. `rules test`
does not use the index: it explains every rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .conditions import Condition, SenderDomain


@dataclass(frozen=True)
class DomainIndex:
    always: tuple[int, ...]
    exact: dict[str, tuple[int, ...]]
    trees: dict[str, tuple[int, ...]]

    @classmethod
    def build(cls, rules: Sequence[tuple[Condition, ...]]) -> DomainIndex:
        """The index of rules given by their conditions, in rule order."""
        always: list[int] = []
        exact: dict[str, list[int]] = {}
        trees: dict[str, list[int]] = {}
        for i, conditions in enumerate(rules):
            cond = next((c for c in conditions
                         if isinstance(c, SenderDomain) and not c.negate), None)
            if cond is None:
                always.append(i)
                continue
            for d in cond.exact:
                exact.setdefault(d, []).append(i)
            for t in cond.trees:
                trees.setdefault(t, []).append(i)
        return cls(tuple(always), {k: tuple(v) for k, v in exact.items()},
                   {k: tuple(v) for k, v in trees.items()})

    def candidates(self, domain: str) -> list[int]:
        """Indexes of the rules that may match mail from `domain`, in rule order."""
        if not domain:
            return list(self.always)
        found = set(self.always)
        found.update(self.exact.get(domain, ()))
        parts = domain.split(".")
        for k in range(len(parts)):
            found.update(self.trees.get(".".join(parts[k:]), ()))
        return sorted(found)
