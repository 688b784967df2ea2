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
            assert d.ticket_number == customer.ticket_number  # threaded by its number, but
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
