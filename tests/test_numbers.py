"""Ticket number generators: OTRS-compatible formats, check digits, concurrency."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sqlalchemy import text

from ticketstore import numbers
from ticketstore.db import make_engine, make_sessionmaker, upgrade

DAY = dt.date(2013, 12, 16)


def test_known_valid_date_checksum_number() -> None:
    assert numbers.format_number("date-checksum", "10", 13, DAY) == "2013121610000137"
    assert numbers.is_plausible("date-checksum", "2013121610000137")


def test_wrong_check_digit_is_rejected() -> None:
    assert not numbers.is_plausible("date-checksum", "2013121610000136")


def test_sum_divisible_by_ten_gives_check_digit_one() -> None:
    # 2*1 + 4*2 = 10: the scheme uses 1 there, never 0.
    assert numbers.check_digit("24") == 1
    assert numbers.check_digit("25") == 8


def test_formats_of_each_generator() -> None:
    day = dt.date(2026, 11, 22)
    assert numbers.format_number("date", "10", 7, day) == "202611221000007"
    assert numbers.format_number("autoincrement", "10", 7, day) == "1000007"
    assert numbers.format_number("date-checksum", "10", 123456, day) == (
        "2026112210123456" + str(numbers.check_digit("2026112210123456"))
    )


def test_check_digits_weigh_1_2_1_2() -> None:
    # 3*1 + 1*2 + 4*1 + 1*2 + 5*1 = 16: 4 brings it to 20.
    assert numbers.check_digit("31415") == 4
    assert numbers.check_digit("") == 1
    assert numbers.check_digit("9") == 1 and numbers.check_digit("09") == 2


def test_date_generators_count_per_day_and_autoincrement_globally() -> None:
    day = dt.date(1999, 1, 2)
    assert numbers.counter_scope("date", day) == "19990102"
    assert numbers.counter_scope("date-checksum", day) == "19990102"
    assert numbers.counter_scope("autoincrement", day) == "global"
    assert numbers.format_number("date", "7", 1, day) == "19990102700001"
    assert numbers.format_number("date", "7", 123456, day, min_size=3) == "199901027123456"


@given(
    st.sampled_from(["date-checksum", "date", "autoincrement"]),
    st.from_regex(r"\A[0-9]{1,4}\Z"),
    st.integers(min_value=1, max_value=10**9),
    st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2999, 12, 31)),
)
def test_generated_numbers_are_plausible_and_unique_per_counter(
    generator: str, system_id: str, counter: int, day: dt.date
) -> None:
    number = numbers.format_number(generator, system_id, counter, day)
    assert number.isdigit()
    assert numbers.is_plausible(generator, number)
    assert number != numbers.format_number(generator, system_id, counter + 1, day)
    if generator == "date-checksum":
        # Any single-digit change of the check digit is detected.
        wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
        assert not numbers.is_plausible(generator, wrong)


@given(st.from_regex(r"\A[0-9]{9,20}\Z"), st.integers(0, 19), st.integers(1, 9))
def test_check_digit_catches_typos_at_weight_one_positions(
    base: str, pos: int, delta: int
) -> None:
    """The scheme's real guarantee: a changed digit at a weight-1 position is caught,
    except when it moves the sum between 0 and 9 (mod 10), which both give digit 1.
    (Weight-2 positions miss a change by 5; that is the scheme, not our code.)"""
    pos = (pos % ((len(base) + 1) // 2)) * 2  # even index = weight 1
    changed = (int(base[pos]) + delta) % 10
    typo_base = base[:pos] + str(changed) + base[pos + 1:]

    def weighted(d: str) -> int:
        return sum(int(c) * (1 if i % 2 == 0 else 2) for i, c in enumerate(d)) % 10

    assume({weighted(base), weighted(typo_base)} != {0, 9})
    number = base + str(numbers.check_digit(base))
    assert not numbers.is_plausible("date-checksum", typo_base + number[-1])


def test_counter_increments_on_both_backends(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    now = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    got = []
    for _ in range(3):
        with factory() as s, s.begin():
            got.append(numbers.new_ticket_number(s.connection(), "date-checksum", "10", now))
    assert [g[:15] for g in got] == ["202611221000001", "202611221000002", "202611221000003"]
    engine.dispose()


def _make_numbers(url: str, count: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    now = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    made = []
    for _ in range(count):
        with factory() as s, s.begin():
            made.append(numbers.new_ticket_number(s.connection(), "date-checksum", "10", now))
    out.put(made)


def test_two_processes_never_share_a_number(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    results = _in_processes(_make_numbers, (db_url, 60), 2)
    merged = results[0] + results[1]
    assert len(merged) == 120
    assert len(set(merged)) == 120


def test_a_writer_allocates_while_another_writers_transaction_is_open(pg_databases: object,
                                                                        ) -> None:
    """No lock on the counter is held until the allocating transaction commits."""
    engine = make_engine(pg_databases.migrated())  # type: ignore[attr-defined]
    other = make_engine(engine.url.render_as_string(hide_password=False))
    now = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    try:
        with engine.begin() as open_batch:
            first = numbers.new_ticket_number(open_batch, "date-checksum", "10", now)
            # Another process (its own engine: its own blocks) while the batch is open:
            # without its own claim transaction it would wait for the batch's COMMIT.
            with other.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '3s'"))
                second = numbers.new_ticket_number(conn, "date-checksum", "10", now)
        assert first != second
        assert {first[:8], second[:8]} == {"20261122"}
    finally:
        engine.dispose()
        other.dispose()


def _allocate(url: str, count: int, generator: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """A writer making tickets' numbers in transactions of 5 (a group commit's batch)."""
    engine = make_engine(url)
    now = dt.datetime(2026, 11, 22, 23, 59, tzinfo=dt.UTC)
    made: list[str] = []
    while len(made) < count:
        with engine.begin() as conn:
            made += [numbers.new_ticket_number(conn, generator, "10", now) for _ in range(5)]
    engine.dispose()
    out.put(made)


@pytest.mark.parametrize("generator", ["date-checksum"])
def test_four_processes_allocate_unique_well_formed_numbers(
        pg_databases: object, generator: str) -> None:
    url = pg_databases.migrated()  # type: ignore[attr-defined]
    engine = make_engine(url)
    with engine.begin() as conn:  # an older gateway's counter continues, never restarts
        conn.execute(text("INSERT INTO counters (scope, value) VALUES (:s, 41)"),
                     {"s": numbers.counter_scope(generator, dt.date(2026, 11, 22))})
    engine.dispose()
    results = _in_processes(_allocate, (url, 50, generator), 4)
    merged = [n for r in results for n in r]
    assert len(merged) == len(set(merged)) == 200
    counters = sorted(int(n[-6:-1] if generator == "date-checksum" else n[2:]) for n in merged)
    assert counters[0] > 41
    for number in merged:
        assert numbers.is_plausible(generator, number)
        if generator == "date-checksum":
            assert re.fullmatch(r"2026112210\d{5}\d", number), number
        else:
            assert re.fullmatch(r"10\d{5}", number), number
    for result in results:  # each process hands its numbers out in order
        assert result == sorted(result)


def test_blocks_grow_from_one_so_a_single_ticket_wastes_no_number(pg_databases: object,
                                                                   ) -> None:
    url = pg_databases.migrated()  # type: ignore[attr-defined]
    now = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    made = []
    for _ in range(3):  # three `ticketgate pipe` processes: an engine each, one ticket each
        engine = make_engine(url)
        with engine.begin() as conn:
            made.append(numbers.new_ticket_number(conn, "date", "10", now))
        engine.dispose()
    assert made == ["202611221000001", "202611221000002", "202611221000003"]
    engine = make_engine(url)
    with engine.begin() as conn:  # a daemon: blocks of 1, 2, 4, 8, 16, 16 counters
        made = [numbers.new_ticket_number(conn, "date", "10", now)[-2:] for _ in range(40)]
        value = conn.execute(text("SELECT value FROM counters")).scalar_one()
    engine.dispose()
    assert made == [f"{n:02d}" for n in range(4, 44)]
    assert value == 3 + 1 + 2 + 4 + 8 + 16 + 16


def _in_processes(target: Callable[..., None], args: tuple[Any, ...], count: int) -> list[Any]:
    """Run `target(*args, queue)` in `count` spawned processes; what each put on the queue."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, out)) for _ in range(count)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results
