"""Conditions: small frozen objects, each the test of one aspect of a message.

A condition's `test` is its only logic, used both for routing and by `rules test`: it
returns a `Verdict` with the plain (not negated) result, the regex captures, and the
reason, which is a function formatted only when `rules test` explains, so routing builds
no strings. Lists mean "any of": `subject_contains = ["invoice", "factura"]` holds when
the subject contains either word.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import regex

from .view import MessageView

# Seconds one regex search may run before the condition counts as undecided.
REGEX_TIMEOUT = 0.05
NO_CAPTURES: Mapping[str, str] = {}


class Verdict(NamedTuple):
    held: bool | None  # the plain test; None when undecided (a regex timed out)
    why: Callable[[], str]  # what the condition saw, for `rules test`
    captures: Mapping[str, str] = NO_CAPTURES  # named regex groups of the match


@dataclass(frozen=True)
class Condition:
    key: str  # as written in the rule file, e.g. "not_from_domain"
    negate: bool

    def test(self, view: MessageView) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    def holds(self, verdict: Verdict) -> bool:
        """The verdict with the negation applied; an undecided test holds in neither form."""
        return verdict.held is not None and verdict.held != self.negate

    @property
    def group_names(self) -> frozenset[str]:
        """Named regex groups this condition can capture (for thread_key templates)."""
        return frozenset()


def _quote(values: tuple[str, ...]) -> str:
    shown = ", ".join(repr(v) for v in values[:5])
    return shown + (f" (+{len(values) - 5} more)" if len(values) > 5 else "")


@dataclass(frozen=True)
class Glob(Condition):
    """from, envelope_from, recipient, to, cc, attachment_name, attachment_type: `*`, `?`."""

    field: str
    patterns: tuple[str, ...]  # lower case

    def test(self, view: MessageView) -> Verdict:
        values = view.values(self.field)
        what = self.field.replace("_", " ")
        hit = next(((v, p) for v in values for p in self.patterns
                    if fnmatch.fnmatchcase(v, p)), None)
        if hit is None:
            return Verdict(False, lambda: f"{what} {', '.join(values[:5]) or '(none)'} "
                                          f"matches none of {_quote(self.patterns)}")
        return Verdict(True, lambda: f"{what} {hit[0]} matches {hit[1]!r}")


@dataclass(frozen=True)
class SenderDomain(Condition):
    """`example.com` is exact; `*.example.com` is example.com and every subdomain of it."""

    patterns: tuple[str, ...]
    exact: frozenset[str]
    trees: tuple[str, ...]

    def test(self, view: MessageView) -> Verdict:
        d = view.from_domain
        held = bool(d) and (d in self.exact
                            or any(d == t or d.endswith("." + t) for t in self.trees))
        verb = "matches" if held else "matches none of"
        return Verdict(held, lambda: f"sender domain {d or '(none)'} {verb} "
                                     f"{_quote(self.patterns)}")


@dataclass(frozen=True)
class Contains(Condition):
    """subject_contains / body_contains, and one header of header_contains: any substring."""

    field: str  # "subject", "body" or "header <Name>"
    needles: tuple[str, ...]  # case-folded

    def test(self, view: MessageView) -> Verdict:
        texts = view.texts(self.field, folded=True)
        if not texts:
            return _missing(self.field)
        hit = next((n for n in self.needles for t in texts if n in t), None)
        if hit is None:
            return Verdict(False, lambda: f"{self.field} contains none of "
                                          f"{_quote(self.needles)}")
        return Verdict(True, lambda: f"{self.field} contains {hit!r}")


@dataclass(frozen=True)
class Matches(Condition):
    """subject_matches / body_matches, and one header of header_matches: any regex.

    Regexes are case-insensitive with ^/$ at line ends. A search that runs longer than
    REGEX_TIMEOUT leaves the test undecided, unless another pattern matched.
    """

    field: str
    patterns: tuple[regex.Pattern[str], ...]

    def test(self, view: MessageView) -> Verdict:
        texts = view.texts(self.field)
        if not texts:
            return _missing(self.field)
        timed_out = False
        for p in self.patterns:
            for text in texts:
                try:
                    m = p.search(text, timeout=REGEX_TIMEOUT)
                except TimeoutError:
                    timed_out = True
                    continue
                if m is not None:
                    return _found(self.field, p, m)
        if timed_out:
            return Verdict(None, lambda: f"{self.field}: a regex timed out after "
                                         f"{REGEX_TIMEOUT}s (treated as not matched)")
        return Verdict(False, lambda: f"{self.field} matches none of "
                                      + ", ".join(f"/{p.pattern}/" for p in self.patterns[:5]))

    @property
    def group_names(self) -> frozenset[str]:
        return frozenset(n for p in self.patterns for n in p.groupindex)


def _found(what: str, p: regex.Pattern[str], m: regex.Match[str]) -> Verdict:
    captures = {k: v or "" for k, v in m.groupdict().items()}
    return Verdict(True, lambda: f"{what} matches /{p.pattern}/", captures)


def _missing(what: str) -> Verdict:
    return Verdict(False, lambda: f"{what} is missing")


@dataclass(frozen=True)
class AllOf(Condition):
    """header_contains / header_matches: a test for every header named in the table."""

    parts: tuple[Condition, ...]

    def test(self, view: MessageView) -> Verdict:
        verdicts = []
        for part in self.parts:
            verdict = part.test(view)
            if not verdict.held:
                return verdict
            verdicts.append(verdict)
        captures = {k: v for verdict in verdicts for k, v in verdict.captures.items()}
        return Verdict(True, lambda: "; ".join(v.why() for v in verdicts), captures)

    @property
    def group_names(self) -> frozenset[str]:
        return frozenset().union(*(p.group_names for p in self.parts))


@dataclass(frozen=True)
class HeaderExists(Condition):
    names: tuple[str, ...]

    def test(self, view: MessageView) -> Verdict:
        hit = next((n for n in self.names if view.msg.has_header(n)), None)
        if hit is None:
            return Verdict(False, lambda: f"none of the headers {_quote(self.names)} exists")
        return Verdict(True, lambda: f"header {hit} exists")


@dataclass(frozen=True)
class Size(Condition):
    """size_over / size_under: the raw message size in bytes."""

    limit: int
    over: bool

    def test(self, view: MessageView) -> Verdict:
        size = view.size
        held = size > self.limit if self.over else size < self.limit
        return Verdict(held, lambda: f"size {size} bytes {'is' if held else 'is not'} "
                                     f"{'over' if self.over else 'under'} {self.limit}")


@dataclass(frozen=True)
class Label(Condition):
    """classification: one of the labels the intake core computed (bounce, bulk, ...)."""

    labels: tuple[str, ...]

    def test(self, view: MessageView) -> Verdict:
        hit = [label for label in self.labels if label in view.labels]

        def why() -> str:
            have = ", ".join(sorted(view.labels)) or "none"
            if hit:
                return f"classified {', '.join(hit)} (labels: {have})"
            return f"not classified {' or '.join(self.labels)} (labels: {have})"

        return Verdict(bool(hit), why)


def _source(view: MessageView) -> str:
    source = view.verdict.source
    return "not checked" if source == "off" else f"by {source}"


@dataclass(frozen=True)
class Result(Condition):
    """dkim / dmarc: the sender verdict's result (dkimpy's, or a trusted MTA's)."""

    field: str  # "dkim" or "dmarc"
    results: tuple[str, ...]

    def test(self, view: MessageView) -> Verdict:
        r = getattr(view.verdict, self.field)
        held = r in self.results
        return Verdict(held, lambda: f"{self.field} result {r} ({_source(view)}) "
                                     f"{'is' if held else 'is not'} {' or '.join(self.results)}")


@dataclass(frozen=True)
class Aligned(Condition):
    """aligned: a valid DKIM signature of the From domain (or a parent of it)."""

    wanted: bool

    def test(self, view: MessageView) -> Verdict:
        v = view.verdict
        held = v.aligned == self.wanted

        def why() -> str:
            state = ("a valid signature aligned with the From domain" if v.aligned
                     else "no valid signature aligned with the From domain")
            return (f"{state} (dkim {v.dkim}, {_source(view)}); "
                    f"{'wanted' if held else 'required'}: aligned = {str(self.wanted).lower()}")

        return Verdict(held, why)
