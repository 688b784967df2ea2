"""`ticketgate rules check` and `ticketgate rules test` as an admin runs them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, update

from gateway.cli import main
from gateway.config import load_config
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.runtime import build_intake, open_store
from rules.dryrun import dry_run
from tests.rules_helpers import message
from tests.support import make_config
from ticketstore.models import Article, Event, OutboxMessage, Ticket

NOW = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)

CONFIG = """
[database]
url = "sqlite:///var/tg.db"

[[queues]]
name = "Support"
addresses = ["support@helpdesk.example"]

[[queues]]
name = "Billing"
addresses = ["billing@helpdesk.example"]

[rules]
dir = "rules"

[pipe]
handoff_socket = ""
"""

RULES = r"""
[[rule]]
name = "alert"
subject_matches = '^\*\* PROBLEM Service Alert: (?P<host>[^/]+)/(?P<service>.+?) is \w+ \*\*'
thread_key = "nagios:{host}/{service}"
no_auto_response = true
stop = true

[[rule]]
name = "billing"
subject_contains = ["invoice", "factura"]
queue = "Billing"

[[rule]]
name = "everyone"
tags = ["seen"]
"""

ALERT = "** PROBLEM Service Alert: web01/HTTP is CRITICAL **"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "ticketgate.toml").write_text(CONFIG)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10-main.toml").write_text(RULES)
    (tmp_path / "var").mkdir()
    return tmp_path


def run(site: Path, *args: str) -> int:
    return main(["-c", str(site / "ticketgate.toml"), "rules", *args])


def test_check_ok(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(site, "check") == 0
    assert capsys.readouterr().out.startswith("ok: 3 rules in 1 files")


def test_check_reports_file_line_rule_and_exits_1(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = site / "rules" / "20-bad.toml"
    bad.write_text('[[rule]]\nname = "junk"\nqueue = "Junk"\n')
    assert run(site, "check") == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{bad}:3: rule 'junk': queue: unknown queue 'Junk' "
        "(configured: Support, Billing, Postmaster)"
    ]


CLOSERS = """
[[rule]]
name = "anyone closes"
from = "nagios@monitoring.example"
state = "closed"

[[rule]]
name = "any signer closes"
from = "nagios@*"
aligned = true
state = "closed"

[[rule]]
name = "not aligned closes"
from = "nagios@monitoring.example"
not_aligned = true
state = "closed"

[[rule]]
name = "nagios closes"
from = ["nagios@monitoring.example", "icinga@monitoring.example"]
dmarc = "pass"
state = "closed"

[[rule]]
name = "opens"
from_domain = "monitoring.example"
state = "open"
"""


def test_check_warns_of_rules_that_close_tickets_on_the_senders_word(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closers = site / "rules" / "30-close.toml"
    closers.write_text(CLOSERS)
    assert run(site, "check") == 0  # warnings: the rules load as before
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        f"{closers}:2: rule 'anyone closes': warning: closes tickets without "
        "`aligned = true`: anyone can write its From (docs/rules.md, \"Rules that change "
        "state need a verified sender\")",
        f"{closers}:7: rule 'any signer closes': warning: closes tickets for a From "
        "pattern, not an exact address: any domain can sign its own mail",
        f"{closers}:13: rule 'not aligned closes': warning: closes tickets without "
        "`aligned = true`: anyone can write its From (docs/rules.md, \"Rules that change "
        "state need a verified sender\")",
    ]
    assert out[3].startswith("ok: 8 rules in 2 files")


def test_the_starter_rules_draw_no_warning(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import resources

    starter = Path(str(resources.files("gateway").joinpath("starter", "rules")))
    (tmp_path / "ticketgate.toml").write_text(CONFIG.replace('dir = "rules"',
                                                            f'dir = "{starter}"'))
    assert main(["-c", str(tmp_path / "ticketgate.toml"), "rules", "check"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def write_eml(site: Path, raw: bytes) -> str:
    p = site / "m.eml"
    p.write_bytes(raw)
    return str(p)


def test_test_explains_every_rule_without_a_database(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eml = write_eml(site, message(subject="Factura 12", sender="ana@cliente.example"))
    assert run(site, "test", eml) == 0
    out = capsys.readouterr().out
    assert "no    alert (10-main.toml:2): subject_matches: subject matches none of" in out
    assert "MATCH billing (10-main.toml:9): subject_contains: subject contains 'factura'" in out
    assert "MATCH everyone (10-main.toml:14): no conditions: matches every message" in out
    assert "queue:        Billing (set by rule 'billing')" in out
    assert "ticket:       new ticket in Billing (there is no database yet)" in out
    assert "auto-response: yes: new-ticket auto-response to ana@cliente.example" in out
    assert "(answer limits not checked: no database)" in out
    assert not (site / "var" / "tg.db").exists()  # a dry run creates nothing


def test_test_finds_the_follow_up_ticket_and_changes_nothing(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(str(site / "ticketgate.toml"))
    store = open_store(config)
    intake = build_intake(config, store)
    env = Envelope("nagios@mon.example", ("support@helpdesk.example",))
    first = intake.process(message(ALERT, body="one", sender="nagios@mon.example"), env)
    store.dispose()
    engine = create_engine(config.database_url)

    def counts() -> list[int]:
        with engine.connect() as c:
            return [c.execute(select(func.count()).select_from(m)).scalar_one()
                    for m in (Ticket, Article, Event, OutboxMessage)]

    before = counts()
    eml = write_eml(site, message(ALERT, body="two", sender="nagios@mon.example"))
    assert run(site, "test", eml, "--json", "-f", "nagios@mon.example") == 0
    data = json.loads(capsys.readouterr().out)
    assert counts() == before
    engine.dispose()
    assert data["ticket"]["number"] == first.ticket_number
    assert data["ticket_note"] == f"follow-up to [Ticket#{first.ticket_number}] (new) in Support"
    assert data["route"]["thread_key"] == "nagios:web01/HTTP"
    assert data["auto_response"] is False
    assert "follow_up_ack = false" in data["auto_response_why"]
    assert [r["status"] for r in data["rules"]] == ["matched", "skipped", "skipped"]
    assert data["rules"][0]["applied"] == ["no_auto_response", "thread_key", "stop"]


def test_test_says_why_no_auto_response_for_a_new_ticket(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eml = write_eml(site, message(subject="hi", headers={"Auto-Submitted": "auto-generated"}))
    assert run(site, "test", eml, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["auto_response"] is False
    assert data["auto_response_why"].startswith("new-ticket suppressed (auto-submitted)")


def test_test_with_broken_rules_reports_them_and_exits_1(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / "rules" / "20-bad.toml").write_text('[[rule]]\nname = "x"\nsubject_matches = "("\n'
                                               'tags = ["t"]\n')
    eml = write_eml(site, message(subject="invoice"))
    assert run(site, "test", eml) == 1
    out = capsys.readouterr().out
    assert "problem: " in out and "20-bad.toml:3: rule 'x': subject_matches: bad regex" in out
    assert "queue:        Billing (set by rule 'billing')" in out


@pytest.mark.parametrize(("queue", "headers", "note", "outcome", "state"), [
    ("Support", {}, "reopens it (follow_up_closed = reopen)", Outcome.FOLLOW_UP, "open"),
    ("Sales", {}, "stored, then rejected (follow_up_closed = reject)", Outcome.REJECTED,
     "closed"),
    ("Billing", {}, "new ticket in Support, linked to closed", Outcome.CREATED, "closed"),
    ("Billing", {"X-Autoreply": "yes"}, "out-of-office reply, so it does not reopen it",
     Outcome.FOLLOW_UP, "closed"),
])
def test_test_explains_a_closed_ticket_as_the_intake_then_stores_it(
    tmp_path: Path, queue: str, headers: dict[str, str], note: str, outcome: Outcome,
    state: str,
) -> None:
    """The dry run's verdict and the real delivery that follows it agree."""
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'tg.db'}")
    store = open_store(config)
    intake = build_intake(config, store)
    rcpt = f"{queue.lower()}@helpdesk.example"
    first = intake.process(message(subject="printer"), Envelope("jane@customer.example", (rcpt,)))
    with store.engine.begin() as conn:
        conn.execute(update(Ticket).values(state="closed", closed_at=NOW))
    reply = message(subject=f"Re: [Ticket#{first.ticket_number}] printer", body="again",
                    headers=headers)
    env = Envelope("jane@customer.example", ("support@helpdesk.example",))
    assert note in dry_run(config, reply, env).ticket_note
    d = intake.process(reply, env)
    with store.engine.connect() as conn:
        closed_one = conn.execute(select(Ticket.state).where(
            Ticket.number == first.ticket_number)).scalar_one()
    store.dispose()
    assert d.outcome is outcome
    assert (d.ticket_number == first.ticket_number) is (outcome is not Outcome.CREATED)
    assert closed_one == state
