"""`ticketgate pipe` as the MTA runs it: a real subprocess, stdin in, an exit code out.

Every test starts `python -m gateway` (the same entry point as the `ticketgate` console
script) with a config file written for it; no monkeypatching reaches the subprocess.
Failures are provoked from outside: a held SQLite write lock, a closed PostgreSQL port,
a trigger that makes inserts fail, a config the pipe cannot read.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.pipe import normalise_sender
from gateway.sysexits import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from tests.pipe_helpers import SUPPORT, query, ticketgate, write_config
from tests.support import mail

REPLIES = ["reply_outlook_aw.eml", "reply_outlook_re.eml", "reply_gmail.eml",
           "reply_apple_mail.eml", "reply_thunderbird.eml", "reply_mobile_no_tag.eml",
           "long_headers.eml"]


def pipe(config: Path, raw: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return ticketgate(config, "pipe", *args, stdin=raw)


INBOUND = "select * from articles where direction = 'in'"


def inbound(db_url: str) -> int:
    return len(query(db_url, INBOUND))


@pytest.fixture
def cfg(tmp_path: Path, sqlite_url: str) -> Path:
    return write_config(tmp_path, sqlite_url)


def sqlite_path(config: Path) -> Path:
    return config.parent / "tg.db"


# -- stored ----------------------------------------------------------------------------------


def test_fixture_conversation_through_the_real_pipe(tmp_path: Path, db_url: str) -> None:
    """As a user would: pipe the original and every reply; one ticket, every article."""
    config = write_config(tmp_path, db_url, autoresponse={"enabled": True})
    assert ticketgate(config, "db", "upgrade").returncode == 0
    first = pipe(config, mail("new_ticket_de.eml"), "-f", "ana.mueller@customer.example",
                 "-r", SUPPORT)
    assert first.returncode == EX_OK, first.stderr
    for name in REPLIES:
        r = pipe(config, mail(name), "-f", "ana.mueller@customer.example", "-r", SUPPORT)
        assert r.returncode == EX_OK, (name, r.stderr)
    rows = query(db_url, "select number, title, state from tickets")
    assert len(rows) == 1
    assert rows[0].title == "Drucker im Büro druckt nur Streifen"
    assert rows[0].state == "new"
    raws = [r.raw for r in query(db_url, f"{INBOUND} order by id")]
    assert [bytes(r) for r in raws] == [mail(n) for n in ["new_ticket_de.eml", *REPLIES]]


def test_broken_and_odd_fixtures_exit_zero(cfg: Path) -> None:
    for name in ["broken_boundary.eml", "new_ja_iso2022jp.eml", "undeclared_8bit_cp1252.eml"]:
        r = pipe(cfg, mail(name), "-f", "x@customer.example", SUPPORT)
        assert r.returncode == EX_OK, (name, r.stderr)


def test_duplicate_delivery_is_acknowledged_once_stored(cfg: Path, sqlite_url: str) -> None:
    assert pipe(cfg, mail("duplicate_delivery_1.eml"), "-r", SUPPORT).returncode == EX_OK
    assert pipe(cfg, mail("duplicate_delivery_2.eml"), "-r", SUPPORT).returncode == EX_OK
    assert inbound(sqlite_url) == 1


def test_recipients_from_headers_when_none_given(cfg: Path, sqlite_url: str) -> None:
    assert pipe(cfg, mail("new_de_latin1_qp.eml")).returncode == EX_OK
    (row,) = query(sqlite_url, "select q.name from tickets t join queues q on q.id = t.queue_id")
    assert row[0] == "Billing"


def test_positional_and_repeated_recipients(cfg: Path, sqlite_url: str) -> None:
    r = pipe(cfg, mail("new_ticket_de.eml"), "-f", "<ana@x.example>", "-r",
             "<nobody@else.example>", "billing@helpdesk.example")
    assert r.returncode == EX_OK
    (row,) = query(sqlite_url, INBOUND)
    assert row.envelope_sender == "ana@x.example"
    assert json.loads(row.envelope_recipients) == ["nobody@else.example",
                                                   "billing@helpdesk.example"]


def test_null_sender_from_pipe8(cfg: Path, sqlite_url: str) -> None:
    """pipe(8) expands ${sender} of a bounce to MAILER-DAEMON: stored as the null sender."""
    r = pipe(cfg, mail("bounce_dsn.eml"), "-f", "MAILER-DAEMON", "-r", SUPPORT)
    assert r.returncode == EX_OK, r.stderr
    (row,) = query(sqlite_url, INBOUND)
    assert row.envelope_sender == ""
    assert row.kind == "bounce"
    assert "null-sender" in json.loads(row.classification)


def test_normalise_sender() -> None:
    assert normalise_sender(None) is None
    for null in ("", "<>", "MAILER-DAEMON", "mailer-daemon", " <> "):
        assert normalise_sender(null) == ""
    assert normalise_sender("<ana@x.example>") == "ana@x.example"
    assert normalise_sender("mailer-daemon@x.example") == "mailer-daemon@x.example"


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"", b"  \r\n\t\n"])
def test_empty_input_is_65(cfg: Path, stdin: bytes) -> None:
    r = pipe(cfg, stdin, "-r", SUPPORT)
    assert r.returncode == EX_DATAERR
    assert b"empty message" in r.stderr


def test_unknown_recipient_is_67_only_in_strict_mode(tmp_path: Path, sqlite_url: str) -> None:
    strict = write_config(tmp_path, sqlite_url, intake={"strict_recipients": True})
    raw = mail("new_ticket_de.eml")
    r = pipe(strict, raw, "-r", "nobody@helpdesk.example")
    assert r.returncode == EX_NOUSER
    assert b"unknown recipient" in r.stderr
    assert inbound(sqlite_url) == 0
    assert pipe(strict, raw, "-r", "support+vip@helpdesk.example").returncode == EX_OK
    loose = write_config(tmp_path, sqlite_url)
    other = mail("new_de_latin1_qp.eml")
    assert pipe(loose, other, "-r", "nobody@helpdesk.example").returncode == EX_OK
    queues = query(sqlite_url, "select q.name from tickets t join queues q on q.id = t.queue_id "
                               "order by t.id")
    assert [q[0] for q in queues] == ["Support", "Postmaster"]


def test_oversize_message_is_recorded_and_bounced(tmp_path: Path, sqlite_url: str) -> None:
    """Issue 17: a permanent code, and `5.3.4` first on the one stderr line (pipe(8) takes
    it as the bounce's DSN status), not a silent exit 0."""
    config = write_config(tmp_path, sqlite_url, intake={"max_message_size": 2048})
    raw = mail("new_ticket_de.eml") + b"x" * 5000 + b"\n"
    r = pipe(config, raw, "-f", "ana@x.example", "-r", SUPPORT)
    assert r.returncode == EX_UNAVAILABLE
    assert r.stderr.startswith(b"5.3.4 ") and r.stderr.count(b"\n") == 1, r.stderr
    assert b"exceeds the limit of 2048 bytes" in r.stderr
    assert inbound(sqlite_url) == 0
    (ev,) = query(sqlite_url, "select kind, detail from events")
    assert ev.kind == "size-rejected"
    assert json.loads(ev.detail) == {"size": len(raw), "limit": 2048,
                                     "mail_from": "ana@x.example", "rcpt_to": [SUPPORT]}


# -- temporary failures ------------------------------------------------------------------------


def test_locked_sqlite_database_is_75(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, sqlite_url, database={"busy_timeout": 0.3})
    assert ticketgate(config, "db", "upgrade").returncode == 0
    holder = sqlite3.connect(sqlite_path(config), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        r = pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == EX_TEMPFAIL
    assert b"temporary failure" in r.stderr
    assert b"Traceback" not in r.stderr
    assert not (tmp_path / "spool" / "failed").exists()  # transient: the MTA retries
    assert pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT).returncode == EX_OK


def test_an_oversize_refusal_that_cannot_be_recorded_is_75_with_its_cause(
        tmp_path: Path, sqlite_url: str) -> None:
    """The bounce waits until the size-rejected event is stored; meanwhile the one stderr
    line names the cause, never an exception class."""
    config = write_config(tmp_path, sqlite_url, database={"busy_timeout": 0.3},
                          intake={"max_message_size": 2048})
    assert ticketgate(config, "db", "upgrade").returncode == 0
    holder = sqlite3.connect(sqlite_path(config), isolation_level=None)
    raw = mail("new_ticket_de.eml") + b"x" * 5000 + b"\n"
    try:
        holder.execute("BEGIN EXCLUSIVE")
        r = pipe(config, raw, "-f", "ana@x.example", "-r", SUPPORT)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == EX_TEMPFAIL
    assert r.stderr.count(b"\n") == 1 and b"locked" in r.stderr, r.stderr
    assert b"OperationalError" not in r.stderr and b"Traceback" not in r.stderr
    assert pipe(config, raw, "-f", "ana@x.example", "-r", SUPPORT).returncode == EX_UNAVAILABLE


def test_unreachable_postgresql_is_75(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgresql+psycopg://tg:tg@127.0.0.1:1/ticketgate")
    r = pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT)
    assert r.returncode == EX_TEMPFAIL
    assert b"Traceback" not in r.stderr
    assert not (tmp_path / "spool" / "failed").exists()


def test_postgresql_without_schema_is_75(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path, pg_url)
    r = pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT)
    assert r.returncode == EX_TEMPFAIL
    assert ticketgate(config, "db", "upgrade").returncode == 0
    assert pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT).returncode == EX_OK


def test_bad_config_is_75_not_a_crash(tmp_path: Path) -> None:
    config = tmp_path / "ticketgate.toml"
    config.write_text('[tickets]\ngenrator = "date"\n')
    r = pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT)
    assert r.returncode == EX_TEMPFAIL
    assert b"tickets.genrator" in r.stderr


def test_unexpected_error_is_75_and_quarantined_then_replayed(cfg: Path, sqlite_url: str) -> None:
    assert ticketgate(cfg, "db", "upgrade").returncode == 0
    db = sqlite3.connect(sqlite_path(cfg), isolation_level=None)
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON articles "
               "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
    db.close()
    raw = mail("attachments_names.eml")
    r = pipe(cfg, raw, "-f", "petra@x.example", "-r", "billing@helpdesk.example")
    assert r.returncode == EX_TEMPFAIL
    assert b"kept for retry" in r.stderr
    assert b"injected failure" not in r.stderr  # no internals on the MTA's log line
    failed = cfg.parent / "spool" / "failed"
    (eml,) = failed.glob("*.eml")
    assert eml.read_bytes() == raw
    meta = json.loads(eml.with_suffix(".json").read_text())
    assert meta["mail_from"] == "petra@x.example"
    assert meta["rcpt_tos"] == ["billing@helpdesk.example"]
    assert "injected failure" in meta["error"]
    assert "Traceback" in meta["traceback"]
    assert not list(failed.glob(".tmp-*"))
    assert query(sqlite_url, "select count(*) from tickets")[0][0] == 0

    listed = ticketgate(cfg, "spool", "list")
    assert listed.returncode == 0
    assert eml.name.encode() in listed.stdout and b"injected failure" in listed.stdout

    still = ticketgate(cfg, "spool", "replay")
    assert still.returncode == 1
    assert b"still failing" in still.stdout
    assert eml.exists()

    db = sqlite3.connect(sqlite_path(cfg), isolation_level=None)
    db.execute("DROP TRIGGER boom")
    db.close()
    replay = ticketgate(cfg, "spool", "replay")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert b"created" in replay.stdout and b"replayed 1 of 1" in replay.stdout
    assert not list(failed.iterdir())
    (row,) = query(sqlite_url, INBOUND)
    assert bytes(row.raw) == raw
    assert row.envelope_sender == "petra@x.example"
    assert json.loads(row.envelope_recipients) == ["billing@helpdesk.example"]
    # Replaying again finds nothing; the MTA's own retry is now a duplicate.
    assert b"replayed 0 of 0" in ticketgate(cfg, "spool", "replay").stdout
    assert pipe(cfg, raw, "-r", "billing@helpdesk.example").returncode == EX_OK
    assert inbound(sqlite_url) == 1


def test_quarantine_failure_is_still_75(tmp_path: Path, sqlite_url: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool folder should be")
    config = write_config(tmp_path, sqlite_url, intake={"spool_dir": str(blocker)})
    assert ticketgate(config, "db", "upgrade").returncode == 0
    db = sqlite3.connect(sqlite_path(config), isolation_level=None)
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON tickets "
               "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
    db.close()
    r = pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT)
    assert r.returncode == EX_TEMPFAIL
    assert b"Traceback" not in r.stderr


# -- what the pipe imports ---------------------------------------------------------------------

HEAVY = ("aiosmtpd", "jinja2", "dkim")


def _imported(stderr: bytes) -> set[str]:
    names = set()
    for line in stderr.decode("utf-8", "replace").splitlines():
        m = re.match(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S.*)$", line)
        if m:
            names.add(m.group(1).strip())
    return names


def _pipe_imports(config: Path, name: str) -> set[str]:
    """Modules one delivery imports, once the database exists (the steady state: the
    first delivery to a new SQLite file also runs the Alembic migrations)."""
    warm_up = b"From: w@customer.example\nSubject: warm-up\n\nfirst\n"
    assert ticketgate(config, "pipe", "-r", SUPPORT, stdin=warm_up).returncode == EX_OK
    r = ticketgate(config, "pipe", "-r", SUPPORT, stdin=mail(name),
                   extra_python=("-X", "importtime"))
    assert r.returncode == EX_OK
    modules = _imported(r.stderr)
    assert "gateway.intake.core" in modules and "gateway.mail.parse" in modules  # the check works
    assert "sqlalchemy" in modules
    return modules


@pytest.mark.parametrize("name", ["new_ticket_de.eml", "reply_gmail.eml", "bounce_dsn.eml"])
def test_plain_store_does_not_import_server_templates_or_dkim(cfg: Path, name: str) -> None:
    """Auto-responses off: nothing is rendered or signed, nothing listens."""
    modules = _pipe_imports(cfg, name)
    loaded = {m for m in modules if m.split(".")[0] in HEAVY}
    assert loaded == set(), sorted(loaded)
    # On SQLite the PostgreSQL dialect (~90 ms of imports) is not needed either.
    assert "sqlalchemy.dialects.sqlite" in modules
    assert "sqlalchemy.dialects.postgresql" not in modules


def test_pipe_with_auto_responses_does_not_import_the_server_or_dkim(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = write_config(tmp_path, sqlite_url, autoresponse={"enabled": True})
    modules = _pipe_imports(config, "new_ticket_de.eml")
    loaded = {m for m in modules if m.split(".")[0] in ("aiosmtpd", "dkim")}
    assert loaded == set(), sorted(loaded)


def test_pipe_with_unreachable_handoff_socket_falls_back_without_heavy_imports(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = write_config(tmp_path, sqlite_url,
                          pipe={"handoff_socket": str(tmp_path / "no-daemon.sock")})
    r = ticketgate(config, "pipe", "-r", SUPPORT, stdin=mail("new_ticket_de.eml"),
                   extra_python=("-X", "importtime"))
    assert r.returncode == EX_OK
    loaded = {m for m in _imported(r.stderr) if m.split(".")[0] in ("aiosmtpd", "dkim")}
    assert loaded == set(), sorted(loaded)
    assert inbound(sqlite_url) == 1


def test_invalid_rules_are_75_without_quarantine(tmp_path: Path, sqlite_url: str) -> None:
    """Broken rule files fail every delivery alike: the MTA queue waits, the spool stays empty."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-broken.toml").write_text('[[rule]]\nname = "x"\nsubject_matches = "("\n'
                                          'queue = "Support"\n')
    config = write_config(tmp_path, sqlite_url, rules={"dir": str(rules)})
    result = pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT)
    assert result.returncode == EX_TEMPFAIL
    assert b"rules check" in result.stderr
    assert not (tmp_path / "spool" / "failed").exists()
    rules.joinpath("10-broken.toml").unlink()
    assert pipe(config, mail("new_ticket_de.eml"), "-r", SUPPORT).returncode == EX_OK
