"""The cheaper check digit and date formatting give what the plain formulas give."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from ticketstore import numbers


def _reference_check_digit(digits: str) -> int:
    total = sum(int(d) * (1 if i % 2 == 0 else 2) for i, d in enumerate(digits))
    digit = 10 - total % 10
    return 1 if digit == 10 else digit


@given(st.from_regex(r"\A[0-9]{0,30}\Z"))
def test_check_digit_weights_1_2_1_2(digits: str) -> None:
    assert numbers.check_digit(digits) == _reference_check_digit(digits)


@given(st.dates(min_value=dt.date(1000, 1, 1)))
def test_day_scope_is_strftime(day: dt.date) -> None:
    assert numbers.counter_scope("date", day) == f"{day:%Y%m%d}"
    assert numbers.format_number("date", "7", 1, day) == f"{day:%Y%m%d}700001"
