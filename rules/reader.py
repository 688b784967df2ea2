"""Read a directory of rule files into a `RuleSet`, or report every problem with its line.

tomllib keeps no line numbers, so the line of a problem is found in the file text: the
n-th `[[rule]]` header starts the n-th rule, and within it the line where `key =`
appears. That is good enough for the way people write rule files; if a key cannot be
found (inline tables, unusual layout), the rule's header line is reported.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .conditions import Condition
from .errors import Problem, RulesError, ValueProblem
from .model import Actions, Rule, RuleSet
from .parse_actions import ACTION_KEYS, check_template, parse_action, type_name
from .parse_conditions import BUILDERS, build_condition, is_condition_key, sort_key

ALL_KEYS = ("name", "description", *ACTION_KEYS, *BUILDERS, *(f"not_{k}" for k in BUILDERS))

_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
_TOML_LINE = re.compile(r"at line (\d+)")


def rule_files(directory: Path) -> list[Path]:
    """`*.toml` in file-name order; editor back-ups and hidden files are skipped."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.toml") if not p.name.startswith((".", "#")))


def file_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in rule_files(directory):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def load_rules(directory: Path, queues: Iterable[str], max_match_chars: int = 65536) -> RuleSet:
    """The rule set in `directory` (missing = no rules); raises RulesError listing every problem."""
    ruleset, problems = check_rules(directory, queues, max_match_chars)
    if problems:
        raise RulesError(problems)
    return ruleset


def check_rules(
    directory: Path, queues: Iterable[str], max_match_chars: int = 65536
) -> tuple[RuleSet, list[Problem]]:
    signature = file_signature(directory)
    known_queues = tuple(queues)
    rules: list[Rule] = []
    problems: list[Problem] = []
    seen: dict[str, Rule] = {}
    for path in rule_files(directory):
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), 1, "", f"cannot read: {exc}"))
            continue
        file_rules, file_problems = parse_rule_text(text, str(path), known_queues)
        problems.extend(file_problems)
        for rule in file_rules:
            first = seen.get(rule.name)
            if first is not None:
                problems.append(Problem(rule.file, rule.line, rule.name,
                                        f"name already used at {first.file}:{first.line}"))
                continue
            seen[rule.name] = rule
            rules.append(rule)
    return RuleSet(tuple(rules), signature, max_match_chars), problems


class _Locator:
    """Find the line of the n-th rule and of a key within it."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.starts = [i for i, line in enumerate(self.lines) if _RULE_HEADER.match(line)]

    def rule_line(self, n: int) -> int:
        return self.starts[n] + 1 if n < len(self.starts) else 1

    def key_line(self, n: int, key: str) -> int:
        """The line of `key =` or `[rule.key]` in the n-th rule, else the rule's header."""
        if n >= len(self.starts):
            return self.top_key_line(key)
        end = self.starts[n + 1] if n + 1 < len(self.starts) else len(self.lines)
        return self._find(key, rf"\[\s*rule\.{re.escape(key)}\s*\]", self.starts[n], end)

    def top_key_line(self, key: str) -> int:
        return self._find(key, rf"\[+\s*{re.escape(key)}\s*[\].]", 0, len(self.lines))

    def _find(self, key: str, table: str, start: int, end: int) -> int:
        pat = re.compile(rf"""^\s*(?:["']?{re.escape(key)}["']?\s*[=.]|{table})""")
        return next((i + 1 for i in range(start, end) if pat.match(self.lines[i])), start + 1)


def parse_rule_text(
    text: str, filename: str, queues: tuple[str, ...]
) -> tuple[list[Rule], list[Problem]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LINE.search(str(exc))
        return [], [Problem(filename, int(m.group(1)) if m else 1, "", f"not valid TOML: {exc}")]
    loc = _Locator(text)
    problems: list[Problem] = []
    for key in data:
        if key != "rule":
            problems.append(Problem(filename, loc.top_key_line(key), "",
                                    f"unknown top-level key {key!r} (rules are [[rule]] tables)"))
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        problems.append(Problem(filename, loc.top_key_line("rule"), "",
                                "write each rule as [[rule]] (double brackets)"))
        return [], problems
    rules: list[Rule] = []
    for n, raw in enumerate(raw_rules):
        rule, rule_problems = _parse_rule(n, raw, filename, loc, queues)
        problems.extend(rule_problems)
        if rule is not None and not rule_problems:
            rules.append(rule)
    return rules, problems


def _parse_rule(
    n: int, raw: Any, filename: str, loc: _Locator, queues: tuple[str, ...]
) -> tuple[Rule | None, list[Problem]]:
    line = loc.rule_line(n)
    label = f"#{n + 1}"
    if not isinstance(raw, dict):
        return None, [Problem(filename, line, label, "a rule must be a table")]
    problems: list[Problem] = []
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        label = name.strip()
    else:
        problems.append(Problem(filename, loc.key_line(n, "name") if "name" in raw else line,
                                label, "needs a name (a non-empty string)"))

    def problem(key: str, message: str) -> None:
        problems.append(Problem(filename, loc.key_line(n, key), label, message))

    conditions: list[Condition] = []
    actions: dict[str, Any] = {}
    description = ""
    for key, value in raw.items():
        try:
            if key == "description":
                if not isinstance(value, str):
                    raise ValueProblem(f"must be a string, not {type_name(value)}")
                description = value
            elif is_condition_key(key):
                conditions.append(build_condition(key, value))
            elif key in ACTION_KEYS:
                actions[key] = parse_action(key, value, queues)
            elif key != "name":
                close = difflib.get_close_matches(key, ALL_KEYS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problem(key, f"unknown key {key!r}{hint}")
        except ValueProblem as exc:
            problem(key, f"{key}: {exc}")
    groups = frozenset(g for c in conditions if not c.negate for g in c.group_names)
    for key in ("thread_key", "customer"):
        try:
            if key in actions:
                check_template(actions[key], groups)
        except ValueProblem as exc:
            problem(key, f"{key}: {exc}")
    if not problems and not (set(actions) - {"override"}):
        problems.append(Problem(filename, line, label,
                                "has no actions (queue, priority, state, tags, customer, "
                                "ignore, no_auto_response, thread_key, stop)"))
    if problems:
        return None, problems
    rule = Rule(
        name=label, file=filename, line=line,
        conditions=tuple(sorted(conditions, key=sort_key)),
        actions=Actions(**actions), description=description,
    )
    return rule, []
