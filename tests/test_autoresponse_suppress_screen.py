"""The suppression screen skips only checks that would all have said None.

`suppression` starts after the leading run of label / null-sender checks when the
message has none of those labels and a sender. Here every combination of those labels
(and the null sender) is evaluated both ways, with the later checks stubbed, and must
give the same verdict as calling every check of CHECKS in order.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from autoresponse import suppress
from gateway.mail import classify as c


def _unscreened(ctx: Any) -> tuple[str, str] | None:
    for name, check in suppress.CHECKS:
        reason = check(ctx)
        if reason:
            return name, reason
    return None


def _ctx(labels: frozenset[str], mail_from: str | None) -> Any:
    stored = SimpleNamespace(
        classification=SimpleNamespace(labels=labels,
                                       reasons=tuple(f"{lb}: why" for lb in sorted(labels))),
        envelope=SimpleNamespace(mail_from=mail_from),
    )
    return SimpleNamespace(stored=stored)


@pytest.fixture
def later_checks_stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks after the screen answer a fixed "later" verdict, so no database is needed."""
    screened = {name for name, _ in suppress._AFTER_SCREEN}
    checks = tuple((name, (lambda _ctx: "later") if name in screened else check)
                   for name, check in suppress.CHECKS)
    monkeypatch.setattr(suppress, "CHECKS", checks)
    monkeypatch.setattr(suppress, "_AFTER_SCREEN",
                        tuple(pair for pair in checks if pair[0] in screened))


def test_screen_covers_the_label_checks_before_the_first_other_check() -> None:
    assert suppress._AFTER_SCREEN[0][0] == "noreply-sender"
    expected = {c.AUTO_SUBMITTED, c.BULK, c.LIST, c.LOOP, c.SUPPRESS_REQUESTED, c.BOUNCE,
                c.OUT_OF_OFFICE}
    assert set(suppress._SCREEN_LABELS) == expected


@pytest.mark.usefixtures("later_checks_stubbed")
@pytest.mark.parametrize("mail_from", ["", None, "ana@customer.example"])
def test_screened_verdict_equals_every_check_in_order(mail_from: str | None) -> None:
    labels = sorted(suppress._SCREEN_LABELS | {"unrelated-label"})
    for size in range(3):
        for combo in itertools.combinations(labels, size):
            ctx = _ctx(frozenset(combo), mail_from)
            assert suppress.suppression(ctx) == _unscreened(ctx), (combo, mail_from)
