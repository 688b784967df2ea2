"""The failure table: which failure gets which reply and pipe exit code."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from gateway import failures
from gateway.sysexits import EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE


def test_a_database_failure_is_transient_and_anything_else_a_quarantined_bug() -> None:
    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    assert failures.failure_of(locked) is failures.TRANSIENT
    assert failures.failure_of(RuntimeError("bug")) is failures.UNEXPECTED
    assert failures.UNEXPECTED.quarantine and not failures.TRANSIENT.quarantine


def test_our_failures_never_bounce() -> None:
    """Postfix bounces on 5xx and on exit codes it does not know: a failure of our own
    code must be a 4xx reply and one of the pipe's few exit codes."""
    ours = [failures.TRANSIENT, failures.UNEXPECTED, failures.INVALID_RULES,
            failures.CANNOT_START, failures.BAD_CONFIG, failures.CRASHED]
    for failure in ours:
        assert failure.reply.startswith("451 4.3.0"), failure
        assert failure.exit_code == EX_TEMPFAIL, failure
    table = [*ours, failures.UNKNOWN_RECIPIENT, failures.TOO_BIG, failures.EMPTY]
    assert {f.exit_code for f in table} <= failures.PIPE_EXIT_CODES


def test_one_stderr_line_without_the_exception_text() -> None:
    line = failures.TOO_BIG.line(size=5000, limit=4096)
    assert line == (
        "5.3.4 ticketgate pipe: message of 5000 bytes exceeds the limit of 4096 bytes")
    assert "\n" not in failures.TRANSIENT.line()


def test_a_permanent_failure_s_line_starts_with_its_dsn_status() -> None:
    """pipe(8) takes a leading enhanced status code as the bounce's DSN status."""
    assert failures.TOO_BIG.exit_code == EX_UNAVAILABLE
    assert failures.TOO_BIG.line(size=1, limit=0).startswith("5.3.4 ")
    assert failures.UNKNOWN_RECIPIENT.line().startswith("5.1.1 ")
    for temporary in (failures.TRANSIENT, failures.UNEXPECTED, failures.EMPTY):
        assert temporary.line().startswith("ticketgate pipe: ")


@pytest.mark.parametrize(("code", "text", "expected"), [
    (250, "2.0.0 Ok", EX_OK),
    (451, "4.3.0 Temporary failure", EX_TEMPFAIL),
    (421, "4.3.2 shutting down", EX_TEMPFAIL),
    (550, "5.1.1 No such recipient", EX_NOUSER),
    (550, "5.7.1 policy", EX_TEMPFAIL),
    (552, "5.3.4 too big", EX_TEMPFAIL),  # not the pipe's decision: never 0 (handoff.py)
    (554, "5.0.0 whatever", EX_TEMPFAIL),
    (500, "Error: bad syntax", EX_TEMPFAIL),
])
def test_exit_code_for_a_reply_of_the_daemon(code: int, text: str, expected: int) -> None:
    assert failures.exit_code_for_reply(code, text) == expected


def test_combined_exit_code_of_several_recipients() -> None:
    assert failures.combine_exit_codes([EX_OK, EX_OK]) == EX_OK
    assert failures.combine_exit_codes([EX_OK, EX_TEMPFAIL]) == EX_TEMPFAIL
    assert failures.combine_exit_codes([EX_NOUSER, EX_OK]) == EX_OK
    assert failures.combine_exit_codes([EX_NOUSER]) == EX_NOUSER
    assert failures.combine_exit_codes([]) == EX_TEMPFAIL
