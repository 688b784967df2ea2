"""Rules inside the intake core, against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.runtime import Store
from rules.loader import load_router
from tests.rules_helpers import message
from ticketstore.models import Event, Ticket

ENV = Envelope(mail_from="x@customer.example", rcpt_tos=("support@helpdesk.example",))

RULES = r"""
[[rule]]
name = "spam"
header_contains = { "X-Spam-Flag" = "YES" }
ignore = true
stop = true

[[rule]]
name = "recovery"
subject_matches = '^\*\* RECOVERY Service Alert: (?P<host>[^/]+)/(?P<service>.+?) is \w+ \*\*'
thread_key = "nagios:{host}/{service}"
state = "closed"
stop = true

[[rule]]
name = "problem"
subject_matches = '^\*\* PROBLEM Service Alert: (?P<host>[^/]+)/(?P<service>.+?) is \w+ \*\*'
thread_key = "nagios:{host}/{service}"
priority = 2
tags = ["monitoring"]
stop = true

[[rule]]
name = "acme"
from_domain = "*.acme.example"
customer = "acme"
tags = ["key-account"]

[[rule]]
name = "billing"
subject_contains = ["invoice", "factura", "rechnung"]
queue = "Billing"
priority = 2
state = "open"
"""


def make_intake(config: Config, store: Store, text: str = RULES) -> Intake:
    rules_dir = config.path(config.rules.dir)
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "10-test.toml").write_text(text)
    intake = Intake(config, store.factory, router=load_router(config))
    intake.sync_queues()
    return intake


def ticket(store: Store, number: str | None) -> Ticket:
    with store.factory() as s:
        return s.execute(select(Ticket).where(Ticket.number == number)).scalar_one()


def events(store: Store, kind: str) -> list[Event]:
    with store.factory() as s:
        return list(s.execute(select(Event).where(Event.kind == kind)).scalars())


def test_new_ticket_gets_the_route_and_the_history_says_which_rules(
    config: Config, store: Store
) -> None:
    intake = make_intake(config, store)
    d = intake.process(message(subject="Rechnung 2026-11", sender="a@eu.acme.example"), ENV)
    assert d.outcome is Outcome.CREATED and d.queue == "Billing"
    t = ticket(store, d.ticket_number)
    assert (t.priority, t.state, t.customer_id, t.tags) == (2, "open", "acme", ["key-account"])
    routed = events(store, "routed")
    assert [e.detail["rules"] for e in routed] == [["acme", "billing"]]
    assert routed[0].ticket_id == t.id


def test_ignored_mail_is_counted_with_the_rule_name_and_stores_nothing(
    config: Config, store: Store
) -> None:
    intake = make_intake(config, store)
    d = intake.process(message(headers={"X-Spam-Flag": "YES"}), ENV)
    assert d.outcome is Outcome.IGNORED
    assert [e.detail["rules"] for e in events(store, "ignored")] == [["spam"]]
    with store.factory() as s:
        assert s.execute(select(Ticket)).first() is None


def test_monitoring_alerts_thread_by_key_and_recovery_closes(
    config: Config, store: Store
) -> None:
    intake = make_intake(config, store)
    mon = "nagios@mon.example"
    first = intake.process(message("** PROBLEM Service Alert: web01/HTTP is CRITICAL **",
                                   body="1", sender=mon), ENV)
    again = intake.process(message("** PROBLEM Service Alert: web01/HTTP is CRITICAL **",
                                   body="2", sender=mon), ENV)
    other = intake.process(message("** PROBLEM Service Alert: web02/HTTP is CRITICAL **",
                                   body="3", sender=mon), ENV)
    assert first.outcome is Outcome.CREATED and again.outcome is Outcome.FOLLOW_UP
    assert again.ticket_number == first.ticket_number != other.ticket_number
    t = ticket(store, first.ticket_number)
    assert t.thread_key == "nagios:web01/HTTP" and t.priority == 2
    rec = intake.process(message("** RECOVERY Service Alert: web01/HTTP is OK **",
                                 body="4", sender=mon), ENV)
    assert rec.outcome is Outcome.FOLLOW_UP and rec.ticket_number == first.ticket_number
    assert ticket(store, first.ticket_number).state == "closed"
    assert ticket(store, other.ticket_number).state == "new"
    later = intake.process(message("** PROBLEM Service Alert: web01/HTTP is CRITICAL **",
                                   body="5", sender=mon), ENV)
    assert later.outcome is Outcome.CREATED and later.ticket_number != first.ticket_number


def test_follow_ups_keep_their_queue(config: Config, store: Store) -> None:
    intake = make_intake(config, store)
    first = intake.process(message(subject="Question"), ENV)
    assert first.queue == "Support"
    reply = intake.process(message(subject=f"Re: [Ticket#{first.ticket_number}] invoice?",
                                   body="follow-up"), ENV)
    assert reply.outcome is Outcome.FOLLOW_UP and reply.queue == "Support"


def test_no_rule_directory_routes_by_recipient(config: Config, store: Store) -> None:
    assert not Path(config.path(config.rules.dir)).exists()
    intake = Intake(config, store.factory, router=load_router(config))
    d = intake.process(message(subject="invoice"), ENV)
    assert d.queue == "Support" and d.notes == ()
