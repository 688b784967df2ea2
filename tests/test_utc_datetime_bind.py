"""UTCDateTime's bind processor remembers its last two results, shared by every column."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeDecorator

from ticketstore.models import UTCDateTime


class _Counted(dt.datetime):
    """A datetime that counts its conversions (process_bind_param calls astimezone)."""

    calls = 0

    def astimezone(self, tz: dt.tzinfo | None = None) -> dt.datetime:
        type(self).calls += 1
        return super().astimezone(tz)


def _plain(dialect: object) -> object:
    """SQLAlchemy's own processor, without the memory."""
    return TypeDecorator.bind_processor(UTCDateTime().dialect_impl(dialect), dialect)


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()],
                         ids=["sqlite", "postgresql"])
def test_same_results_as_sqlalchemy_in_any_order(dialect: object) -> None:
    base = dt.datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=dt.UTC)
    values = [base + dt.timedelta(seconds=i) for i in range(4)]
    values.append(dt.datetime(2026, 1, 1, 5, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))))
    created = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)  # type: ignore[arg-type]
    updated = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)  # type: ignore[arg-type]
    plain = _plain(dialect)
    order = [0, 0, 1, 0, None, 2, 1, 0, 3, 3, 4, 1, None, 4]
    for i, k in enumerate(order):
        value = None if k is None else values[k]
        proc = created if i % 2 else updated
        expected = plain(value) if plain else value  # type: ignore[operator]
        assert proc(value) == expected  # type: ignore[misc]


def test_naive_datetimes_are_still_refused() -> None:
    d = sqlite.dialect()
    proc = UTCDateTime().dialect_impl(d).bind_processor(d)
    with pytest.raises(ValueError, match="naive"):
        proc(dt.datetime(2026, 1, 1))  # type: ignore[misc]


def test_one_value_bound_in_several_columns_is_converted_once() -> None:
    d = sqlite.dialect()
    columns = [UTCDateTime().dialect_impl(d).bind_processor(d) for _ in range(3)]
    now = _Counted(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    since = _Counted(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
    _Counted.calls = 0
    first = columns[0](now)  # type: ignore[misc]
    assert columns[1](now) == first and columns[2](None) is None  # type: ignore[misc]
    assert columns[0](since) != first  # type: ignore[misc]
    assert columns[2](now) == first  # still remembered behind `since`  # type: ignore[misc]
    assert _Counted.calls == 2
