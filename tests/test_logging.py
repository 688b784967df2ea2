"""Log lines under systemd: journald gets priorities and no duplicate timestamps."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from gateway.runtime import JournalFormatter, stderr_is_journal


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
