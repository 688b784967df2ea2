"""Turn the condition keys of a rule file into `Condition` objects, or say what is wrong.

Every condition key has a negated form `not_<key>` that holds exactly when the plain one
does not. Values are checked and compiled here, once, when the files are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import regex

from gateway.mail.verdict import DKIM_RESULTS, DMARC_RESULTS

from .conditions import (
    Aligned,
    AllOf,
    Condition,
    Contains,
    Glob,
    HeaderExists,
    Label,
    Matches,
    Result,
    SenderDomain,
    Size,
)
from .errors import ValueProblem

REGEX_FLAGS = regex.IGNORECASE | regex.MULTILINE | regex.V0
LABELS = ("auto-submitted", "bulk", "list", "bounce", "out-of-office", "loop", "loop-forged",
          "null-sender", "suppress-requested")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueProblem("must be a string or a list of strings")
    if not value or any(not v.strip() for v in value):
        raise ValueProblem("must not be empty")
    return tuple(value)


def _lower(value: Any) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in _strings(value))


def _regexes(value: Any) -> tuple[regex.Pattern[str], ...]:
    out = []
    for pattern in _strings(value):
        try:
            out.append(regex.compile(pattern, REGEX_FLAGS))
        except regex.error as exc:
            raise ValueProblem(f"bad regex {pattern!r}: {exc}") from None
    return tuple(out)


def _header_table(value: Any, part: Callable[[str, Any], Condition]) -> tuple[Condition, ...]:
    if not isinstance(value, dict) or not value:
        raise ValueProblem('must be a table of header name = value(s), e.g. '
                           '{ "X-Spam-Flag" = "YES" }')
    parts = []
    for name, v in value.items():
        if not re.fullmatch(r"[!-9;-~]+", name):
            raise ValueProblem(f"{name!r} is not a header name")
        try:
            parts.append(part(f"header {name}", v))
        except ValueProblem as exc:
            raise ValueProblem(f"header {name}: {exc}") from None
    return tuple(parts)


def _domain(key: str, neg: bool, v: Any) -> Condition:
    pats = tuple(p.rstrip(".") for p in _lower(v))
    bad = next((p for p in pats if not p.startswith("*.") and ("*" in p or "@" in p or "?" in p)),
               None)
    if bad:
        raise ValueProblem(f"{bad!r}: use a domain (example.com) or *.example.com "
                           "(the domain and its subdomains)")
    return SenderDomain(key, neg, pats, frozenset(p for p in pats if not p.startswith("*.")),
                        tuple(p[2:] for p in pats if p.startswith("*.")))


def _folded(value: Any) -> tuple[str, ...]:
    return tuple(s.casefold() for s in _strings(value))


def _header_contains(key: str, neg: bool, v: Any) -> Condition:
    return AllOf(key, neg, _header_table(v, lambda f, x: Contains(key, False, f, _folded(x))))


def _header_matches(key: str, neg: bool, v: Any) -> Condition:
    return AllOf(key, neg, _header_table(v, lambda f, x: Matches(key, False, f, _regexes(x))))


def _bytes(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueProblem("must be an integer (bytes)")
    if v < 0:
        raise ValueProblem("must not be negative")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueProblem("must be true or false")
    return v


def _choices(v: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    vals = _lower(v)
    bad = [s for s in vals if s not in allowed]
    if bad:
        raise ValueProblem(f"unknown value {bad[0]!r}; one of {', '.join(allowed)}")
    return vals


Builder = Callable[[str, bool, Any], Condition]

# Condition key (without "not_") -> builder; the order here is the order of evaluation
# within a rule: a regex over the body runs only if the cheaper tests held.
BUILDERS: dict[str, Builder] = {
    "from": lambda k, n, v: Glob(k, n, "from", _lower(v)),
    "from_domain": _domain,
    "envelope_from": lambda k, n, v: Glob(k, n, "envelope_from", _lower(v)),
    "recipient": lambda k, n, v: Glob(k, n, "recipient", _lower(v)),
    "to": lambda k, n, v: Glob(k, n, "to", _lower(v)),
    "cc": lambda k, n, v: Glob(k, n, "cc", _lower(v)),
    "classification": lambda k, n, v: Label(k, n, _choices(v, LABELS)),
    "dkim": lambda k, n, v: Result(k, n, "dkim", _choices(v, DKIM_RESULTS)),
    "aligned": lambda k, n, v: Aligned(k, n, _bool(v)),
    "dmarc": lambda k, n, v: Result(k, n, "dmarc", _choices(v, DMARC_RESULTS)),
    "size_over": lambda k, n, v: Size(k, n, _bytes(v), True),
    "size_under": lambda k, n, v: Size(k, n, _bytes(v), False),
    "header_exists": lambda k, n, v: HeaderExists(k, n, _strings(v)),
    "header_contains": _header_contains,
    "header_matches": _header_matches,
    "attachment_name": lambda k, n, v: Glob(k, n, "attachment_name", _lower(v)),
    "attachment_type": lambda k, n, v: Glob(k, n, "attachment_type", _lower(v)),
    "subject_contains": lambda k, n, v: Contains(k, n, "subject", _folded(v)),
    "subject_matches": lambda k, n, v: Matches(k, n, "subject", _regexes(v)),
    "body_contains": lambda k, n, v: Contains(k, n, "body", _folded(v)),
    "body_matches": lambda k, n, v: Matches(k, n, "body", _regexes(v)),
}
ORDER = {k: i for i, k in enumerate(BUILDERS)}


def is_condition_key(key: str) -> bool:
    return key.removeprefix("not_") in BUILDERS


def build_condition(key: str, value: Any) -> Condition:
    """Build the condition for `key` (maybe `not_...`); raises ValueProblem."""
    base = key.removeprefix("not_")
    return BUILDERS[base](key, key != base, value)


def sort_key(cond: Condition) -> int:
    return ORDER[cond.key.removeprefix("not_")]
