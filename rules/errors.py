"""Rule-file problems, phrased so an admin can jump to the line: `file:line: rule 'x': ...`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    rule: str  # "" for problems outside a rule (TOML syntax, unknown top-level key)
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:"
        if self.rule:
            return f"{where} rule '{self.rule}': {self.message}"
        return f"{where} {self.message}"


class RulesError(Exception):
    """The rule files are invalid; `problems` lists every one (the server refuses to start)."""

    def __init__(self, problems: tuple[Problem, ...] | list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid rule files:\n" + "\n".join(str(p) for p in self.problems))


class ValueProblem(ValueError):
    """One value in a rule is wrong; the message is shown to the admin after the key."""
