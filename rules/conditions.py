"""Conditions: small frozen objects, each one a test of one aspect of a message.

Every condition key has a negated form `not_<key>` that holds exactly when the plain
one does not. A check returns an `Outcome` that says what it saw, so `rules test` can
explain why a rule did or did not match. Lists mean "any of": `subject_contains =
["invoice", "factura"]` holds when the subject contains either word.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import regex

from .authresults import RESULTS as DKIM_RESULTS
from .view import MessageView

# Seconds one regex search may run before it counts as "no match" (catastrophic patterns).
REGEX_TIMEOUT = 0.05
REGEX_FLAGS = regex.IGNORECASE | regex.MULTILINE | regex.V0

LABELS = ("auto-submitted", "bulk", "list", "bounce", "out-of-office", "loop", "null-sender",
          "suppress-requested")


@dataclass(frozen=True)
class Outcome:
    held: bool  # the plain (not negated) test
    detail: str
    captures: Mapping[str, str] = field(default_factory=dict)
    # False when the test could not be decided (regex timed out): the rule does not match.
    decided: bool = True


NO_CAPTURES: Mapping[str, str] = {}


class Condition:
    """`probe` is the fast test routing uses; `check` also says why, for `rules test`."""

    key: str  # as written in the rule file, e.g. "not_from_domain"
    negate: bool

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        """(the plain test's result, or None when undecided; regex captures)."""
        out = self.check(view)
        return (out.held if out.decided else None), out.captures

    def check(self, view: MessageView) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def holds(self, view: MessageView) -> tuple[bool, Mapping[str, str]]:
        """(holds with the negation applied, captures): the routing path, no strings."""
        raw, caps = self.probe(view)
        if raw is None:
            return False, NO_CAPTURES
        if raw != self.negate:
            return True, NO_CAPTURES if self.negate else caps
        return False, NO_CAPTURES

    def evaluate(self, view: MessageView) -> tuple[bool, str, Mapping[str, str]]:
        """(holds, explanation, captures) with the negation applied."""
        out = self.check(view)
        if not out.decided:
            return False, f"{self.key}: {out.detail}", {}
        holds = out.held != self.negate
        return holds, f"{self.key}: {out.detail}", out.captures if holds and not self.negate else {}

    @property
    def group_names(self) -> frozenset[str]:
        """Named regex groups this condition can capture (for thread_key templates)."""
        return frozenset()


def _quote(values: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:5])
    return shown + (f" (+{len(values) - 5} more)" if len(values) > 5 else "")


def _which(patterns: tuple[str, ...], value: str) -> str:
    return next((p for p in patterns if fnmatch.fnmatchcase(value, p)), patterns[0])


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p.lower())})" for p in patterns))


@dataclass(frozen=True)
class AddressGlob(Condition):
    """from / envelope_from / to / cc / recipient: an address, exact or with * and ?."""

    key: str
    negate: bool
    field: str
    patterns: tuple[str, ...]
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        m = self.compiled.match
        return any(m(a) for a in view.addresses(self.field)), NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        addrs = view.addresses(self.field)
        for a in addrs:
            if self.compiled.match(a):
                return Outcome(True, f"{self.field} {a} matches {_which(self.patterns, a)!r}")
        shown = ", ".join(addrs[:5]) or "(none)"
        return Outcome(False, f"{self.field} {shown} matches none of {_quote(self.patterns)}")


@dataclass(frozen=True)
class SenderDomain(Condition):
    """`example.com` is exact; `*.example.com` is example.com and every subdomain of it."""

    key: str
    negate: bool
    patterns: tuple[str, ...]
    exact: frozenset[str]
    trees: tuple[str, ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        d = view.from_domain
        return bool(d) and (d in self.exact or any(
            d == t or d.endswith("." + t) for t in self.trees)), NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        d = view.from_domain
        if d and (d in self.exact or any(d == t or d.endswith("." + t) for t in self.trees)):
            return Outcome(True, f"sender domain {d} matches {_quote(self.patterns)}")
        return Outcome(False, f"sender domain {d or '(none)'} matches none of "
                              f"{_quote(self.patterns)}")


@dataclass(frozen=True)
class Contains(Condition):
    """subject_contains / body_contains: case-insensitive substring, any of a list."""

    key: str
    negate: bool
    field: str  # "subject" | "body"
    needles: tuple[str, ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        text = view.subject_folded if self.field == "subject" else view.body_folded
        for n in self.needles:
            if n in text:
                return True, NO_CAPTURES
        return False, NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        text = view.subject_folded if self.field == "subject" else view.body_folded
        for n in self.needles:
            if n in text:
                return Outcome(True, f"{self.field} contains {n!r}")
        return Outcome(False, f"{self.field} contains none of {_quote(self.needles)}")


def _search(pattern: regex.Pattern[str], text: str) -> regex.Match[str] | None:
    return pattern.search(text, timeout=REGEX_TIMEOUT)


def _probe_any(
    patterns: tuple[regex.Pattern[str], ...], texts: tuple[str, ...]
) -> tuple[bool | None, Mapping[str, str]]:
    timed_out = False
    for p in patterns:
        for text in texts:
            try:
                m = _search(p, text)
            except TimeoutError:
                timed_out = True
                continue
            if m is not None:
                return True, ({k: (v or "") for k, v in m.groupdict().items()}
                              if p.groupindex else NO_CAPTURES)
    return (None if timed_out else False), NO_CAPTURES


def _match_any(
    patterns: tuple[regex.Pattern[str], ...], texts: tuple[str, ...], what: str
) -> Outcome:
    timed_out = False
    for p in patterns:
        for text in texts:
            try:
                m = _search(p, text)
            except TimeoutError:
                timed_out = True
                continue
            if m is not None:
                caps = {k: (v or "") for k, v in m.groupdict().items()}
                return Outcome(True, f"{what} matches /{p.pattern}/", caps)
    if timed_out:
        return Outcome(False, f"{what}: a regex timed out after {REGEX_TIMEOUT}s "
                              "(treated as not matched)", decided=False)
    shown = ", ".join(f"/{p.pattern}/" for p in patterns[:5])
    return Outcome(False, f"{what} matches none of {shown}")


@dataclass(frozen=True)
class Matches(Condition):
    """subject_matches / body_matches: a regex (case-insensitive, ^/$ at line ends)."""

    key: str
    negate: bool
    field: str
    patterns: tuple[regex.Pattern[str], ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        text = view.subject if self.field == "subject" else view.body
        return _probe_any(self.patterns, (text,))

    def check(self, view: MessageView) -> Outcome:
        text = view.subject if self.field == "subject" else view.body
        return _match_any(self.patterns, (text,), self.field)

    @property
    def group_names(self) -> frozenset[str]:
        return frozenset(n for p in self.patterns for n in p.groupindex)


@dataclass(frozen=True)
class HeaderExists(Condition):
    key: str
    negate: bool
    names: tuple[str, ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        return any(n.lower() in view.msg.headers for n in self.names), NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        for n in self.names:
            if n.lower() in view.msg.headers:
                return Outcome(True, f"header {n} exists")
        return Outcome(False, f"none of the headers {_quote(self.names)} exists")


@dataclass(frozen=True)
class HeaderContains(Condition):
    """{ "X-Spam-Flag" = "YES" }: every named header has a value containing one of its strings."""

    key: str
    negate: bool
    wanted: tuple[tuple[str, tuple[str, ...]], ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        for name, needles in self.wanted:
            values = view.header_values_folded(name.lower())
            if not any(n in v for n in needles for v in values):
                return False, NO_CAPTURES
        return True, NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        for name, needles in self.wanted:
            values = view.header_values_folded(name.lower())
            hit = next((n for n in needles for v in values if n in v), None)
            if hit is None:
                if not values:
                    return Outcome(False, f"header {name} is missing")
                return Outcome(False, f"header {name} contains none of {_quote(needles)}")
        shown = "; ".join(f"{n} contains {_quote(v)}" for n, v in self.wanted)
        return Outcome(True, f"header {shown}")


@dataclass(frozen=True)
class HeaderMatches(Condition):
    key: str
    negate: bool
    wanted: tuple[tuple[str, tuple[regex.Pattern[str], ...]], ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        captures: dict[str, str] = {}
        for name, patterns in self.wanted:
            values = view.header_values(name.lower())
            if not values:
                return False, NO_CAPTURES
            held, caps = _probe_any(patterns, values)
            if not held:
                return held, NO_CAPTURES
            captures.update(caps)
        return True, captures

    def check(self, view: MessageView) -> Outcome:
        captures: dict[str, str] = {}
        details = []
        for name, patterns in self.wanted:
            values = view.header_values(name.lower())
            if not values:
                return Outcome(False, f"header {name} is missing")
            out = _match_any(patterns, values, f"header {name}")
            if not out.held:
                return out
            captures.update(out.captures)
            details.append(out.detail)
        return Outcome(True, "; ".join(details), captures)

    @property
    def group_names(self) -> frozenset[str]:
        return frozenset(n for _h, ps in self.wanted for p in ps for n in p.groupindex)


@dataclass(frozen=True)
class AttachmentGlob(Condition):
    """attachment_name / attachment_type: any attachment's filename or content type."""

    key: str
    negate: bool
    field: str  # "filename" | "content_type"
    patterns: tuple[str, ...]
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        m = self.compiled.match
        return any(m(getattr(a, self.field).lower()) for a in view.msg.attachments), NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        what = "attachment name" if self.field == "filename" else "attachment type"
        for att in view.msg.attachments:
            value = getattr(att, self.field).lower()
            if self.compiled.match(value):
                return Outcome(True, f"{what} {value!r} matches {_which(self.patterns, value)!r}")
        return Outcome(False, f"no {what} matches {_quote(self.patterns)} "
                              f"({len(view.msg.attachments)} attachments)")


@dataclass(frozen=True)
class Size(Condition):
    """size_over / size_under: the raw message size in bytes."""

    key: str
    negate: bool
    limit: int
    over: bool

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        return (view.size > self.limit if self.over else view.size < self.limit), NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        held = view.size > self.limit if self.over else view.size < self.limit
        word = "over" if self.over else "under"
        verb = "is" if held else "is not"
        return Outcome(held, f"size {view.size} bytes {verb} {word} {self.limit}")


@dataclass(frozen=True)
class Label(Condition):
    """classification: one of the labels the intake core computed (bounce, bulk, ...)."""

    key: str
    negate: bool
    labels: tuple[str, ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        return any(lbl in view.labels for lbl in self.labels), NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        hit = [lbl for lbl in self.labels if lbl in view.labels]
        have = ", ".join(sorted(view.labels)) or "none"
        if hit:
            return Outcome(True, f"classified {', '.join(hit)} (labels: {have})")
        return Outcome(False, f"not classified {' or '.join(self.labels)} (labels: {have})")


@dataclass(frozen=True)
class Dkim(Condition):
    """dkim: the verdict in the topmost Authentication-Results header (see authresults)."""

    key: str
    negate: bool
    results: tuple[str, ...]

    def probe(self, view: MessageView) -> tuple[bool | None, Mapping[str, str]]:
        return view.dkim in self.results, NO_CAPTURES

    def check(self, view: MessageView) -> Outcome:
        r = view.dkim
        held = r in self.results
        verb = "is" if held else "is not"
        return Outcome(held, f"dkim result {r} {verb} {' or '.join(self.results)}")


# --- building conditions from rule-file values --------------------------------------------

class ValueProblem(ValueError):
    """A condition value is wrong; the message is shown to the admin as is."""


def _strings(value: Any, what: str = "a string or a list of strings") -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueProblem(f"must be {what}")
    if not value or any(not v.strip() for v in value):
        raise ValueProblem("must not be empty")
    return tuple(value)


def compile_regex(pattern: str) -> regex.Pattern[str]:
    try:
        return regex.compile(pattern, REGEX_FLAGS)
    except regex.error as exc:
        raise ValueProblem(f"bad regex {pattern!r}: {exc}") from None


def _header_table(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict) or not value:
        raise ValueProblem('must be a table of header name = value(s), e.g. '
                           '{ "X-Spam-Flag" = "YES" }')
    out = []
    for name, v in value.items():
        if not re.fullmatch(r"[!-9;-~]+", name):
            raise ValueProblem(f"{name!r} is not a header name")
        try:
            out.append((name, _strings(v)))
        except ValueProblem as exc:
            raise ValueProblem(f"header {name}: {exc}") from None
    return tuple(out)


def _address(key: str, neg: bool, v: Any, field_: str) -> Condition:
    pats = tuple(p.strip().lower() for p in _strings(v))
    return AddressGlob(key, neg, field_, pats, _globs(pats))


def _domain(key: str, neg: bool, v: Any) -> Condition:
    pats = tuple(p.strip().lower().rstrip(".") for p in _strings(v))
    exact, trees = set(), []
    for p in pats:
        if p.startswith("*."):
            trees.append(p[2:])
        elif "*" in p or "@" in p or "?" in p:
            raise ValueProblem(f"{p!r}: use a domain (example.com) or *.example.com "
                               "(the domain and its subdomains)")
        else:
            exact.add(p)
    return SenderDomain(key, neg, pats, frozenset(exact), tuple(trees))


def _contains(key: str, neg: bool, v: Any, field_: str) -> Condition:
    return Contains(key, neg, field_, tuple(s.casefold() for s in _strings(v)))


def _matches(key: str, neg: bool, v: Any, field_: str) -> Condition:
    return Matches(key, neg, field_, tuple(compile_regex(p) for p in _strings(v)))


def _header_exists(key: str, neg: bool, v: Any) -> Condition:
    return HeaderExists(key, neg, _strings(v))


def _header_contains(key: str, neg: bool, v: Any) -> Condition:
    return HeaderContains(key, neg, tuple(
        (name, tuple(s.casefold() for s in vals)) for name, vals in _header_table(v)))


def _header_matches(key: str, neg: bool, v: Any) -> Condition:
    return HeaderMatches(key, neg, tuple(
        (name, tuple(compile_regex(p) for p in vals)) for name, vals in _header_table(v)))


def _attachment(key: str, neg: bool, v: Any, field_: str) -> Condition:
    pats = tuple(p.strip().lower() for p in _strings(v))
    return AttachmentGlob(key, neg, field_, pats, _globs(pats))


def _size(key: str, neg: bool, v: Any, over: bool) -> Condition:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueProblem("must be an integer (bytes)")
    if v < 0:
        raise ValueProblem("must not be negative")
    return Size(key, neg, v, over)


def _choices(v: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    vals = tuple(s.strip().lower() for s in _strings(v))
    bad = [s for s in vals if s not in allowed]
    if bad:
        raise ValueProblem(f"unknown value {bad[0]!r}; one of {', '.join(allowed)}")
    return vals


def _label(key: str, neg: bool, v: Any) -> Condition:
    return Label(key, neg, _choices(v, LABELS))


def _dkim(key: str, neg: bool, v: Any) -> Condition:
    return Dkim(key, neg, _choices(v, DKIM_RESULTS))


Builder = Callable[[str, bool, Any], Condition]

# Condition key (without "not_") -> builder; the order here is the order of evaluation
# within a rule, cheapest first.
BUILDERS: dict[str, Builder] = {
    "from": lambda k, n, v: _address(k, n, v, "from"),
    "from_domain": _domain,
    "envelope_from": lambda k, n, v: _address(k, n, v, "envelope_from"),
    "recipient": lambda k, n, v: _address(k, n, v, "recipient"),
    "to": lambda k, n, v: _address(k, n, v, "to"),
    "cc": lambda k, n, v: _address(k, n, v, "cc"),
    "classification": _label,
    "dkim": _dkim,
    "size_over": lambda k, n, v: _size(k, n, v, True),
    "size_under": lambda k, n, v: _size(k, n, v, False),
    "header_exists": _header_exists,
    "header_contains": _header_contains,
    "header_matches": _header_matches,
    "attachment_name": lambda k, n, v: _attachment(k, n, v, "filename"),
    "attachment_type": lambda k, n, v: _attachment(k, n, v, "content_type"),
    "subject_contains": lambda k, n, v: _contains(k, n, v, "subject"),
    "subject_matches": lambda k, n, v: _matches(k, n, v, "subject"),
    "body_contains": lambda k, n, v: _contains(k, n, v, "body"),
    "body_matches": lambda k, n, v: _matches(k, n, v, "body"),
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
