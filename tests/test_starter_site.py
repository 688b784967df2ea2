"""The examples `ticketgate init` ships do what their comments promise, end to end.

A site written by `init` (config, rules, templates) stores mail through the real intake:
billing words in German and Spanish go to Billing, flagged spam is dropped, and a
Nagios PROBLEM/RECOVERY pair (DKIM-signed by the monitoring domain: the shipped rules
require `aligned = true`) threads onto one ticket that the recovery closes, and a forged
RECOVERY carrying a customer's ticket number closes nothing.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from gateway.cli import main as cli_main
from gateway.config import load_config
from gateway.intake.outcome import Outcome
from gateway.intake.verify.verifier import Verifier
from gateway.mail.envelope import Envelope
from gateway.runtime import build_intake, open_store
from tests.verify_helpers import dkim_key, key_name, records_lookup, sign
from ticketstore.models import Ticket

SUPPORT = "support@helpdesk.example"


def _mail(subject: str, sender: str = "Ana <ana@customer.example>", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{abs(hash((subject, sender)))}@customer.example>\r\n\r\n"
            "Hello\r\n").encode()


def test_starter_site_routes_as_its_examples_say(tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert cli_main(["init", str(site)]) == 0
    config = load_config(str(site / "ticketgate.toml"), env={})
    key = dkim_key(tmp_path)
    dns = records_lookup({key_name("monitoring.example"): key.txt(),
                          key_name("evil.example"): key.txt()})
    store = open_store(config)
    try:
        intake = build_intake(config, store, Verifier.from_config(config, dns))
        env = Envelope("ana@customer.example", (SUPPORT,))

        billing_de = intake.process(_mail("Rechnung für März fehlt"), env)
        billing_es = intake.process(_mail("Factura duplicada"), env)
        assert (billing_de.queue, billing_es.queue) == ("Billing", "Billing")
        assert intake.process(_mail("Printer on fire"), env).queue == "Support"

        spam = _mail("Cheap watches", extra="X-Spam-Flag: YES\r\n")
        assert intake.process(spam, env).outcome is Outcome.IGNORED

        nagios = "Nagios <nagios@monitoring.example>"

        def alert(subject: str, sender: str = nagios, domain: str = "monitoring.example"
                  ) -> bytes:
            return sign(_mail(subject, sender), domain, key)

        customer = intake.process(_mail("Printer jammed"), env)
        tag = f"[Ticket#{customer.ticket_number}]"
        forged = _mail(f"** RECOVERY Host Alert: web01 is UP ** {tag}", nagios)
        other_domain = alert(f"** RECOVERY Host Alert: web01 is UP ** {tag}",
                             "Nagios <nagios@evil.example>", "evil.example")
        for attack in (forged, other_domain):
            d = intake.process(attack, env)
            # Not a participant: a linked ticket of its own (stranger_follow_up), and
            assert d.ticket_number != customer.ticket_number
            assert "monitoring recovery" not in d.notes  # the rule did not match

        problem = intake.process(alert("** PROBLEM Service Alert: web01/HTTP is CRITICAL **"), env)
        again = intake.process(alert("** PROBLEM Service Alert: web01/HTTP is WARNING **"), env)
        recovery = intake.process(alert("** RECOVERY Service Alert: web01/HTTP is OK **"), env)
        assert problem.outcome is Outcome.CREATED
        assert again.ticket_number == recovery.ticket_number == problem.ticket_number
        with store.factory() as s:
            alert = s.execute(
                select(Ticket).where(Ticket.number == problem.ticket_number)).scalar_one()
            assert alert.state == "closed"
            assert "monitoring" in alert.tags
            victim = s.execute(
                select(Ticket).where(Ticket.number == customer.ticket_number)).scalar_one()
            assert victim.state != "closed"
    finally:
        store.dispose()


def test_starter_rules_raise_priority_the_way_the_docs_say(tmp_path: Path) -> None:
    """1 is the lowest priority and 5 the highest (docs/rules.md, docs/cli-json.md): the
    starter's key accounts and monitoring problems must come out above the default 3."""
    import tomllib

    docs = Path(__file__).resolve().parent.parent / "docs"
    assert "1 lowest, 5 highest" in (docs / "rules.md").read_text()
    assert "1 (lowest) – 5 (highest)" in (docs / "cli-json.md").read_text()
    site = tmp_path / "site"
    assert cli_main(["init", str(site)]) == 0
    raised = {rule["name"]: rule["priority"]
              for path in sorted((site / "rules").glob("*.toml"))
              for rule in tomllib.loads(path.read_text())["rule"] if "priority" in rule}
    assert raised.keys() >= {"customer ACME", "monitoring problem"}
    assert all(priority > 3 for priority in raised.values()), raised


def test_init_in_an_absolute_folder_writes_absolute_paths(tmp_path: Path) -> None:
    """An /etc install: config and rules in DIR, data in --state-dir, socket in --run-dir,
    whatever folder the commands later run in."""
    site, state, run = tmp_path / "etc", tmp_path / "lib", tmp_path / "run"
    assert cli_main(["init", str(site), "--state-dir", str(state), "--run-dir", str(run)]) == 0
    config = load_config(str(site / "ticketgate.toml"), env={})
    assert config.database.url == f"sqlite:///{state}/ticketgate.db"
    assert config.intake.spool_dir == f"{state}/spool"
    assert config.pipe.handoff_socket == f"{run}/lmtp.sock"
    assert (config.rules.dir, config.templates.dir) == (f"{site}/rules", f"{site}/templates")
    assert not (site / "var").exists()


def test_init_state_dir_needs_absolute_paths(tmp_path: Path) -> None:
    assert cli_main(["init", "relative-site", "--state-dir", str(tmp_path)]) == 64
    assert cli_main(["init", str(tmp_path / "s"), "--state-dir", "var/lib"]) == 64
    assert not (tmp_path / "s").exists()
