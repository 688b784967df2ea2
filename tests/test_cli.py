"""The introspection CLI: tickets list/show/set, article raw, init, db upgrade.

The --json shapes asserted here are the ones documented in docs/cli-json.md.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from gateway.cli import main
from gateway.config import load_config
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from gateway.runtime import open_store
from tests.pipe_helpers import ticketgate, write_config
from tests.support import mail

NOW = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
N = "2026112210000013"
BILLING_N = "2026112210000022"

TICKET_KEYS = {"number", "title", "queue", "state", "priority", "customer", "tags",
               "thread_key", "created_at", "updated_at", "closed_at", "linked_ticket"}
ARTICLE_KEYS = {"id", "message_id", "direction", "kind", "from", "from_name", "to", "cc",
                "subject", "size", "attachments", "created_at", "verdict",
                "from_stranger"}
EVENT_KEYS = {"id", "kind", "article_id", "detail", "created_at"}


@pytest.fixture
def cfg(tmp_path: Path, db_url: str) -> Path:
    config = write_config(tmp_path, db_url)
    loaded = load_config(str(config), env={})
    store = open_store(loaded)
    intake = Intake(loaded, store.factory, clock=lambda: NOW)
    intake.sync_queues()
    for name, rcpt in [("new_ticket_de.eml", "support@helpdesk.example"),
                       ("reply_gmail.eml", "support@helpdesk.example"),
                       ("attachments_names.eml", "billing@helpdesk.example")]:
        intake.process(mail(name), Envelope("x@customer.example", (rcpt,)))
    store.dispose()
    return config


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_tickets_list_json(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "-c", str(cfg), "tickets", "list")
    assert [t["number"] for t in data] == [BILLING_N, N]  # newest first
    assert all(set(t) == TICKET_KEYS for t in data)
    t = data[1]
    assert t["title"] == "Drucker im Büro druckt nur Streifen"
    assert (t["queue"], t["state"], t["priority"]) == ("Support", "new", 3)
    assert t["customer"] == {"address": "ana.mueller@customer.example", "name": "Ana Müller",
                             "domain": "customer.example", "id": ""}
    assert t["tags"] == [] and t["thread_key"] is None and t["closed_at"] is None
    assert t["linked_ticket"] is None
    assert dt.datetime.fromisoformat(t["created_at"]) == NOW


def test_tickets_list_filters(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(cfg)
    assert [t["number"] for t in run_json(capsys, "-c", c, "tickets", "list", "--queue",
                                          "Billing")] == [BILLING_N]
    assert run_json(capsys, "-c", c, "tickets", "list", "--state", "closed") == []
    assert len(run_json(capsys, "-c", c, "tickets", "list", "--state", "new")) == 2
    assert len(run_json(capsys, "-c", c, "tickets", "list", "--limit", "1")) == 1


def test_tickets_list_table(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-c", str(cfg), "tickets", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NUMBER", "QUEUE", "STATE", "PRIO", "CUSTOMER", "CREATED",
                                "TITLE"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[3].startswith(N) and "Drucker im Büro druckt nur Streifen" in lines[3]


def test_tickets_show_json(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "-c", str(cfg), "tickets", "show", N)
    assert set(data) == TICKET_KEYS | {"articles", "history", "participants"}
    assert data["participants"] == [
        {"address": "ana.mueller@customer.example", "source": "customer",
         "added_at": NOW.isoformat()}]
    assert [a["message_id"] for a in data["articles"]] == [
        "4f1c2a9e-1d3b-4c8e-9a51-7e2b0c6d1a01@customer.example",
        "CAJ8s0Qd5kX=2vN4uXw3T9pLq7ZbR1mYc@mail.gmail.com"]
    a = data["articles"][1]
    assert set(a) == ARTICLE_KEYS
    assert (a["direction"], a["kind"], a["from"], a["from_name"]) == (
        "in", "email", "ana.mueller@customer.example", "Ana Müller")
    assert a["subject"] == f"Re: [Ticket#{N}] Drucker im Büro druckt nur Streifen"
    assert a["to"] == ["support@helpdesk.example"] and a["cc"] == []
    assert a["size"] == len(mail("reply_gmail.eml"))
    # Unsigned mail, verified by dkimpy (the default): nothing aligned.
    assert a["verdict"] == {"dkim": "none", "aligned": False, "dmarc": "none",
                            "aligned_failed": False, "source": "dkimpy"}
    assert [e["kind"] for e in data["history"]] == ["created", "participants-added",
                                                    "follow-up"]
    assert all(set(e) == EVENT_KEYS for e in data["history"])
    assert data["history"][2]["article_id"] == a["id"]


def test_tickets_show_attachments_json(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "-c", str(cfg), "tickets", "show", BILLING_N)
    atts = data["articles"][0]["attachments"]
    assert [x["filename"] for x in atts][1:4] == [
        "Rechnung März 2026.pdf", "Übersicht der offenen Aufträge (Stand November).xlsx",
        "契約書.docx"]
    assert set(atts[0]) == {"id", "filename", "content_type", "size", "sha256"}
    assert atts[1]["content_type"] == "application/pdf" and len(atts[1]["sha256"]) == 64


def test_tickets_show_table(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-c", str(cfg), "tickets", "show", N)
    assert code == 0
    assert out.startswith(f"Ticket {N}  [new]  queue Support  priority 3\n")
    assert "Customer: Ana Müller <ana.mueller@customer.example>" in out
    assert "Articles:" in out and "History:" in out and "follow-up" in out


def test_tickets_show_unknown(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "-c", str(cfg), "tickets", "show", "123")
    assert code == 1 and "no ticket 123" in err


def test_tickets_set_records_events(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(cfg)
    code, out, err = run(capsys, "-c", c, "tickets", "set", N, "--state", "closed",
                         "--queue", "Billing", "--priority", "5", "--by", "alice")
    assert code == 0, err
    assert out.strip() == (f"ticket {N}: state new -> closed, queue Support -> Billing, "
                           "priority 3 -> 5")
    data = run_json(capsys, "-c", c, "tickets", "show", N)
    assert (data["state"], data["queue"], data["priority"]) == ("closed", "Billing", 5)
    assert data["closed_at"] is not None
    changes = [(e["kind"], e["detail"]) for e in data["history"][3:]]
    assert changes == [
        ("state-changed", {"from": "new", "to": "closed", "by": "alice", "via": "cli"}),
        ("queue-changed", {"from": "Support", "to": "Billing", "by": "alice", "via": "cli"}),
        ("priority-changed", {"from": 3, "to": 5, "by": "alice", "via": "cli"}),
    ]
    code, out, _ = run(capsys, "-c", c, "tickets", "set", N, "--state", "closed")
    assert (code, out.strip()) == (0, f"ticket {N}: unchanged")
    code, out, _ = run(capsys, "-c", c, "tickets", "set", N, "--state", "open")
    assert code == 0
    assert run_json(capsys, "-c", c, "tickets", "show", N)["closed_at"] is None


def test_tickets_set_errors(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(cfg)
    code, _, err = run(capsys, "-c", c, "tickets", "set", N)
    assert code == 64 and "nothing to change" in err
    code, _, err = run(capsys, "-c", c, "tickets", "set", N, "--queue", "Nope")
    assert code == 1 and "unknown queue 'Nope'" in err and "Support" in err
    code, _, err = run(capsys, "-c", c, "tickets", "set", "999", "--state", "open")
    assert code == 1 and "no ticket 999" in err
    with pytest.raises(SystemExit):
        main(["-c", c, "tickets", "set", N, "--priority", "9"])
    capsys.readouterr()
    assert run_json(capsys, "-c", c, "tickets", "show", N)["history"][-1]["kind"] == "follow-up"


@pytest.mark.parametrize("name", ["duplicate_delivery_2.eml", "new_ja_shift_jis.eml",
                                  "attachments_names.eml"])
def test_article_raw_writes_the_original_bytes(tmp_path: Path, sqlite_url: str,
                                               name: str) -> None:
    config = write_config(tmp_path, sqlite_url)
    loaded = load_config(str(config), env={})
    store = open_store(loaded)
    intake = Intake(loaded, store.factory)
    d = intake.process(mail(name), Envelope(None, ("support@helpdesk.example",)))
    store.dispose()
    r = ticketgate(config, "article", "raw", str(d.article_id))
    assert r.returncode == 0
    assert r.stdout == mail(name)
    missing = ticketgate(config, "article", "raw", "999")
    assert missing.returncode == 1 and b"no article 999" in missing.stderr


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "etc"
    r = ticketgate(None, "init", str(target))
    assert r.returncode == 0, r.stderr
    starter = target / "ticketgate.toml"
    assert starter.is_file()
    for folder in ("rules", "templates", "var"):
        assert (target / folder).is_dir()
    config = load_config(str(starter), env={})  # the starter is valid as written
    assert config.tickets.hook == "Ticket#"
    assert config.database_url == f"sqlite:///{target.resolve() / 'var' / 'ticketgate.db'}"
    starter.write_text(starter.read_text() + "\n# my edit\n")
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    again = ticketgate(None, "init", str(target))
    assert again.returncode != 0
    assert b"refusing to overwrite" in again.stderr
    assert str(starter).encode() in again.stderr
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before


def test_init_refuses_when_only_one_file_exists(tmp_path: Path) -> None:
    target = tmp_path / "etc"
    target.mkdir()
    (target / "ticketgate.toml").write_text("# mine\n")
    r = ticketgate(None, "init", str(target))
    assert r.returncode != 0
    assert (target / "ticketgate.toml").read_text() == "# mine\n"


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_db_upgrade_on_a_fresh_database(tmp_path: Path, request: pytest.FixtureRequest,
                                        backend: str) -> None:
    url = (f"sqlite:///{tmp_path / 'fresh' / 'new.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    if backend == "postgresql":
        assert _tables(url) == set()
    config = write_config(tmp_path, url)
    r = ticketgate(config, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert b"database schema is up to date" in r.stdout
    assert b"ticketgate:ticketgate@" not in r.stdout  # password hidden
    assert b"ticketgate:ticketgate@" not in r.stderr
    assert b"setup plugin" not in r.stderr  # Alembic's chatter only with -v
    assert {"queues", "tickets", "articles", "attachments", "events", "counters",
            "alembic_version"} <= _tables(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        (version,) = conn.execute(text("select version_num from alembic_version")).one()
    engine.dispose()
    assert version
    again = ticketgate(config, "db", "upgrade")  # idempotent
    assert again.returncode == 0
    if backend == "sqlite":
        db = sqlite3.connect(tmp_path / "fresh" / "new.db")
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.close()


def test_config_error_is_reported_with_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[intake]\nstrict_recipients = 1\n")
    r = ticketgate(bad, "tickets", "list")
    assert r.returncode == 78
    assert str(bad).encode() in r.stderr and b"intake.strict_recipients" in r.stderr
