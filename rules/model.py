"""A rule set as plain frozen data: what the files said, parsed once at load."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property

from .conditions import Condition
from .domain_index import DomainIndex

# Actions that set one value; the first matching rule that sets one wins, unless a later
# matching rule has `override = true`.
SCALAR_ACTIONS = ("queue", "priority", "state", "customer", "ignore", "no_auto_response",
                  "thread_key")


@dataclass(frozen=True)
class Actions:
    queue: str | None = None
    priority: int | None = None
    state: str | None = None
    customer: str | None = None  # may hold {placeholders}, like thread_key
    ignore: bool | None = None
    no_auto_response: bool | None = None
    thread_key: str | None = None  # a template: "nagios:{host}/{service}"
    tags: tuple[str, ...] = ()
    stop: bool = False
    override: bool = False

    def set_fields(self) -> tuple[str, ...]:
        return tuple(f for f in SCALAR_ACTIONS if getattr(self, f) is not None)


@dataclass(frozen=True)
class Rule:
    name: str
    file: str
    line: int
    conditions: tuple[Condition, ...]
    actions: Actions
    description: str = ""


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    # (file name, mtime_ns, size) of each file read, to notice changes.
    files: tuple[tuple[str, int, int], ...] = ()
    max_match_chars: int = 65536
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @cached_property
    def domain_index(self) -> DomainIndex:
        return DomainIndex.build([rule.conditions for rule in self.rules])
