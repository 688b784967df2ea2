"""Log lines: journald gets priorities and no duplicate timestamps; each delivery and
each temporary failure logs what an admin greps for, customer data only at debug."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.handoff import try_handoff
from gateway.mail.envelope import Envelope
from gateway.mail.queueid import postfix_queue_id
from gateway.runtime import JournalFormatter, stderr_is_journal
from gateway.sysexits import EX_TEMPFAIL
from tests.pipe_helpers import ticketgate, write_config
from tests.server_helpers import MESSAGE, RunningDaemon, daemon_config, send, short_socket_dir
from ticketstore.db import make_engine


def test_journal_formatter_prefixes_the_syslog_priority_and_keeps_one_entry() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("ticketgate.server", logging.WARNING, __file__, 1,
                               "two\nlines", None, None)
    assert formatter.format(record) == "<4>ticketgate.server: two\n lines"
    record.levelno = logging.DEBUG
    assert formatter.format(record).startswith("<7>")


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path: Path) -> None:
    st = os.fstat(sys.stderr.fileno())
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stderr_is_journal({})


def test_serve_logs_without_timestamps_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """The real setup_logging in a child whose stderr is a file named by JOURNAL_STREAM."""
    err = tmp_path / "stderr"
    code = ("import logging, os; from gateway.runtime import setup_logging; "
            "setup_logging(False); logging.getLogger('ticketgate.x').info('hello')")
    for journal in (True, False):
        with err.open("wb") as f:
            st = os.fstat(f.fileno())
            env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if journal else ""}
            subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True,
                           cwd=Path(__file__).parent.parent, timeout=60)
        line = err.read_text().strip()
        if journal:
            assert line == "<6>ticketgate.x: hello"
        else:
            assert line.endswith("INFO ticketgate.x: hello") and line[:4].isdigit()


# -- what each delivery logs ----------------------------------------------------------------

RECEIVED = (b"Received: from mail.customer.example (mail.customer.example [192.0.2.7])\r\n"
            b"\tby mx.helpdesk.example (Postfix) with ESMTPS id 4Xyz12AbCd\r\n"
            b"\tfor <support@helpdesk.example>; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
            b"Received: by mail.customer.example (Postfix, from userid 1000) id 4OLDER99\r\n")


def test_postfix_queue_id_comes_from_the_topmost_received_header() -> None:
    assert postfix_queue_id(RECEIVED + MESSAGE) == "4Xyz12AbCd"
    assert postfix_queue_id(MESSAGE) is None
    # Only the header block counts, and only Postfix's own wording.
    assert postfix_queue_id(MESSAGE + b"\r\nReceived: by x (Postfix) id 4BODY12\r\n") is None
    assert postfix_queue_id(b"Received: from a by b (Exim 4.96) id 1vXyZ-000\r\n\r\n") is None


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ticketgate.server" and r.levelno == level]


def test_a_delivery_line_has_queue_id_outcome_ticket_and_duration_and_no_customer_data(
        tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ticketgate.server")
    daemon = RunningDaemon(daemon_config(tmp_path, sqlite_url)).start()
    try:
        client = daemon.lmtp()
        assert send(client, ["support@helpdesk.example"], RECEIVED + MESSAGE)[0][0] == 250
        client.quit()
    finally:
        daemon.stop()
    delivered = [line for line in _lines(caplog, logging.INFO) if line.startswith("delivered")]
    assert len(delivered) == 1
    assert re.fullmatch(r"delivered postfix_id=4Xyz12AbCd disposition=created ticket=\d{16} "
                        r"queue=Support recipients=1 size=\d+ duration=\d+\.\d{3}s",
                        delivered[0]), delivered
    above_debug = " ".join(r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG)
    assert "alice@customer.example" not in above_debug
    assert "app-1@customer.example" not in above_debug
    debug = " ".join(_lines(caplog, logging.DEBUG))
    assert ("delivered postfix_id=4Xyz12AbCd message_id=<app-1@customer.example> "
            "from=<alice@customer.example> to=<support@helpdesk.example>") in debug


def test_a_temporary_failure_names_its_cause_in_reply_log_status_page_and_pipe(
        tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A database locked by another process: 451 with the category, the full cause in
    the log and "Latest errors", and the pipe that handed the message over says it too."""
    caplog.set_level(logging.INFO, logger="ticketgate.server")
    sock = short_socket_dir() / "handoff.sock"
    config = daemon_config(tmp_path, sqlite_url, database={"url": sqlite_url,
                                                          "busy_timeout": 0.2},
                           pipe={"handoff_socket": str(sock)})
    daemon = RunningDaemon(config).start()
    holder = make_engine(sqlite_url)
    try:
        with holder.begin() as conn:  # BEGIN IMMEDIATE: the write lock, held
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
            client = daemon.lmtp()
            replies = send(client, ["support@helpdesk.example"], RECEIVED + MESSAGE)
            client.quit()
            piped = ticketgate(write_config(tmp_path, sqlite_url,
                                            pipe={"handoff_socket": str(sock)}),
                               "pipe", "-f", "alice@customer.example",
                               "-r", "support@helpdesk.example", stdin=MESSAGE)
        errors = [e.message for e in daemon.ctx.errors]
    finally:
        holder.dispose()
        daemon.stop()
    assert replies == [(451, b"4.3.0 database locked, try again later")]
    cause = (f"database at {tmp_path}/tg.db locked for 0.2 s by another process "
             "(database is locked)")
    assert ("temporary failure postfix_id=4Xyz12AbCd duration=" in
            " ".join(_lines(caplog, logging.WARNING)))
    assert any(line.endswith(f"answered 451: {cause}")
               for line in _lines(caplog, logging.WARNING))
    assert f"451 database locked: {cause}" in errors
    assert piped.returncode == EX_TEMPFAIL
    assert piped.stderr.decode() == (
        "ticketgate pipe: temporary failure: database locked (the daemon's reply)\n")


def test_the_pipe_in_process_names_the_cause_on_its_one_line(tmp_path: Path,
                                                            sqlite_url: str) -> None:
    cfg = write_config(tmp_path, sqlite_url, database={"busy_timeout": 0.2})
    assert ticketgate(cfg, "pipe", "-r", "support@helpdesk.example",
                      stdin=MESSAGE).returncode == 0  # creates the schema
    holder = make_engine(sqlite_url)
    try:
        with holder.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
            piped = ticketgate(cfg, "pipe", "-r", "support@helpdesk.example",
                               stdin=MESSAGE.replace(b"app-1@", b"app-2@"))
    finally:
        holder.dispose()
    assert piped.returncode == EX_TEMPFAIL
    assert piped.stderr.decode() == (
        f"ticketgate pipe: temporary failure: database at {tmp_path}/tg.db locked for 0.2 s "
        "by another process (database is locked)\n")


def test_a_required_daemon_that_is_not_there_is_named_on_the_pipes_line(
        tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    sock = short_socket_dir() / "none.sock"
    config = daemon_config(tmp_path, sqlite_url,
                           pipe={"handoff_socket": str(sock), "require_daemon": True})
    assert try_handoff(config, MESSAGE, Envelope("a@b.example", ("support@helpdesk.example",))
                       ) == EX_TEMPFAIL
    assert capsys.readouterr().err == (
        f"ticketgate pipe: temporary failure: the daemon is not reachable on {sock} "
        "(No such file or directory) and [pipe] require_daemon is set\n")
