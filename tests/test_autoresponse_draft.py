"""Answers to new tickets made before the store (autoresponse/draft.py) are exact.

The draft renders and composes with a placeholder number outside the writer's lock; the
store swaps in the real number. Here the same mail is answered once through a draft and
once in the transaction, and the two messages must be the same but for what is fresh
in every answer (Message-ID, Date, MIME boundary). A draft must not be used when it
cannot be exact: templates that transform the number, numbers of another length, a
ticket other than the one drafted for; and the daily limit still applies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from autoresponse import suppress
from autoresponse.draft import Draft
from autoresponse.templates import Templates
from gateway.config import Config
from gateway.envelope import Envelope, Outcome
from gateway.intake import Intake
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import answering_intake, build_mail
from tests.support import make_config
from ticketstore.models import Event, OutboxMessage

SUPPORT = "support@helpdesk.example"


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Config, Store]]:
    config = make_config(tmp_path, sqlite_url, autoresponse={"max_per_day": 2})
    store = open_store(config)
    yield config, store
    store.dispose()


def _mail(i: int, subject: str, sender: str = "") -> tuple[bytes, Envelope]:
    sender = sender or f"c{i}@customer.example"
    body = "Hello,\n" + "this line is long enough to be broken by quoted-printable. " * 3
    return (build_mail(subject=subject, sender=f"Cliente Ñandú <{sender}>",
                       message_id=f"q{i}@customer.example", body=body),
            Envelope(sender, (SUPPORT,)))


def _drafting(config: Config, store: Store) -> Intake:
    """An answering intake that has issued one number: it drafts (the first new ticket
    tells the number's length)."""
    intake = answering_intake(config, store)
    intake.process(*_mail(0, "warm-up"))
    return intake


def _fresh(data: bytes) -> bytes:
    """The message without what differs in every answer."""
    data = re.sub(rb"(?m)^(Message-ID|Date): .*\r\n", b"", data)
    boundary = re.search(rb'boundary="([^"]+)"', data)
    return data.replace(boundary.group(1), b"B") if boundary else data


def _answer(store: Store, number: str) -> OutboxMessage:
    with store.factory() as s:
        for row in s.execute(select(OutboxMessage)).scalars():
            if number.encode() in row.message:
                return row
    raise AssertionError(f"no answer for {number}")


SUBJECTS = ["Printer on fire", "Impresora en llamas: ¿qué hago? " * 3,
            "A very long subject " + "x" * 200]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_a_drafted_answer_is_the_answer_made_in_the_transaction(
    site: tuple[Config, Store], subject: str,
) -> None:
    config, store = site
    intake = _drafting(config, store)
    raw, env = _mail(1, subject)
    drafted = intake.prepare(raw, env)
    assert isinstance(drafted.draft, Draft)
    d1 = intake.process(raw, env)  # through the draft
    with store.engine.begin() as conn:  # the same mail again, no draft: in the transaction
        raw2 = raw.replace(b"q1@", b"q2@")
        p = intake.prepare(raw2, env)
        d2 = intake.store(conn, type(p)(**{**p.__dict__, "draft": None}))
    assert d1.outcome is d2.outcome is Outcome.CREATED
    ours, theirs = _answer(store, d1.ticket_number), _answer(store, d2.ticket_number)
    assert _fresh(ours.message).replace(d1.ticket_number.encode(), b"N") \
        .replace(b"q1@", b"q@") == \
        _fresh(theirs.message).replace(d2.ticket_number.encode(), b"N").replace(b"q2@", b"q@")
    assert ours.template == theirs.template and ours.rcpt_to == theirs.rcpt_to


def test_a_ticket_stored_through_a_draft_is_the_ticket_stored_without(
    site: tuple[Config, Store],
) -> None:
    """The store reuses the columns the draft's preview worked out (`ticket_base`)."""
    from ticketstore.models import Ticket

    config, store = site
    intake = _drafting(config, store)
    raw, env = _mail(1, "Impresora en llamas [urgent]")
    drafted = intake.prepare(raw, env)
    assert isinstance(drafted.draft, Draft) and drafted.ticket_base is not None
    with store.engine.begin() as conn:
        d1 = intake.store(conn, drafted)
    plain = intake.prepare(raw.replace(b"q1@", b"q2@"), env)
    with store.engine.begin() as conn:
        d2 = intake.store(conn, type(plain)(**{**plain.__dict__, "draft": None,
                                               "ticket_base": None}))
    skip = {"id", "number", "created_at", "updated_at"}
    with store.factory() as s:
        t1, t2 = (s.execute(select(Ticket).where(Ticket.number == d.ticket_number)).scalar_one()
                  for d in (d1, d2))
        assert {c.key: getattr(t1, c.key) for c in Ticket.__table__.columns if c.key not in skip} \
            == {c.key: getattr(t2, c.key) for c in Ticket.__table__.columns if c.key not in skip}
        assert t1.created_at == t1.updated_at and t1.closed_at is None
    # Reused, not worked out again: what the preview kept is what the ticket gets.
    third = intake.prepare(raw.replace(b"q1@", b"q3@"), env)
    assert third.ticket_base is not None
    third.ticket_base["title"] = "as the preview had it"
    with store.engine.begin() as conn:
        d3 = intake.store(conn, third)
    with store.factory() as s:
        assert s.execute(select(Ticket.title).where(Ticket.number == d3.ticket_number)
                         ).scalar_one() == "as the preview had it"


def test_the_real_number_replaces_the_placeholder_everywhere(
    site: tuple[Config, Store],
) -> None:
    config, store = site
    intake = _drafting(config, store)
    raw, env = _mail(1, "Printer on fire")
    draft = intake.prepare(raw, env).draft
    assert isinstance(draft, Draft)
    number = intake.process(raw, env).ticket_number
    row = _answer(store, number)
    assert draft.placeholder not in row.message
    assert row.message.count(number.encode()) == draft.data.count(draft.placeholder) >= 3


def test_no_draft_before_the_first_number_or_for_a_likely_follow_up(
    site: tuple[Config, Store],
) -> None:
    config, store = site
    intake = answering_intake(config, store)
    # A process that has issued no number (every `ticketgate pipe`) builds no preview.
    assert intake.responder.drafts is False  # type: ignore[attr-defined]
    assert intake.prepare(*_mail(0, "first")).draft is None  # number length unknown
    number = intake.process(*_mail(0, "first")).ticket_number
    assert intake.prepare(*_mail(1, f"Re: [Ticket#{number}] first")).draft is None
    assert intake.responder.drafts is True  # type: ignore[attr-defined]
    assert intake.prepare(*_mail(2, "second")).draft is not None


def test_a_draft_for_another_ticket_or_length_is_not_used(site: tuple[Config, Store]) -> None:
    config, store = site
    intake = _drafting(config, store)
    draft = intake.prepare(*_mail(1, "Printer on fire")).draft
    assert isinstance(draft, Draft)
    number = intake.process(*_mail(1, "Printer on fire")).ticket_number
    with store.factory() as s:
        from ticketstore.models import Ticket
        from ticketstore.statements import detached_ticket

        t = s.execute(select(Ticket).where(Ticket.number == number)).scalar_one()
        values = {c.key: getattr(t, c.key) for c in Ticket.__table__.columns}
        same = detached_ticket(values, "Support")
        assert draft.fits(same)
        assert not draft.fits(detached_ticket({**values, "title": "other"}, "Support"))
        assert not draft.fits(detached_ticket({**values, "number": number + "0"}, "Support"))
        assert not draft.fits(detached_ticket(values, "Sales"))


def test_the_daily_limit_still_applies_to_drafted_answers(site: tuple[Config, Store]) -> None:
    config, store = site
    intake = _drafting(config, store)
    for i in range(1, 4):
        raw, env = _mail(i, f"question {i}", sender="same@customer.example")
        assert intake.prepare(raw, env).draft is not None
        intake.process(raw, env)
    with store.factory() as s:
        sent = s.execute(select(OutboxMessage).where(
            OutboxMessage.rcpt_to == "same@customer.example")).scalars().all()
        limited = s.execute(select(Event).where(Event.kind == "autoresponse-suppressed")
                            ).scalars().all()
    assert len(sent) == 2  # max_per_day = 2
    assert [e.detail["check"] for e in limited] == ["daily-limit"]


def test_the_daily_limit_is_the_only_database_check() -> None:
    """Drafts run every check but the last before the store, and the store the last."""
    assert suppress.CHECKS[-1][0] == "daily-limit"


VERBATIM = {
    "{{ ticket.number }}": True,
    "[Ticket#{{ ticket.number }}] {{ ticket.title|upper }}": True,
    "{{ ticket['number'] }}": True,
    "{{ ticket.number[:4] }}": False,
    "{{ ticket.number|upper }}": False,
    "{% if ticket.number.endswith('7') %}x{% endif %}": False,
    "{{ ticket.number ~ 'x' }}": False,
    "{{ ticket }}": False,
    "{% for k in ticket %}{{ k }}{% endfor %}": False,
    "{% set ticket = customer %}{{ ticket.number }}": False,
    "{% filter replace('1', 'x') %}{{ ticket.number }}{% endfilter %}": False,
    "{% set x %}{{ ticket.number }}{% endset %}{{ x|reverse }}": False,
    "{% macro m() %}{{ ticket.number }}{% endmacro %}{{ m()|upper }}": False,
    "{% include 'other' %}": False,
}


@pytest.mark.parametrize(("source", "verbatim"), list(VERBATIM.items()))
def test_number_verbatim(tmp_path: Path, source: str, verbatim: bool) -> None:
    (tmp_path / "default" / "en").mkdir(parents=True)
    (tmp_path / "default" / "en" / "new-ticket.txt").write_text(source, encoding="utf-8")
    templates = Templates(tmp_path)
    assert templates.number_verbatim(templates.lookup("default", "new-ticket")) is verbatim


def test_shipped_templates_print_the_number_verbatim() -> None:
    templates = Templates(None)
    assert templates.number_verbatim(templates.lookup("default", "new-ticket"))


def test_queue_name_and_number_of_snapshots_previews_and_session_tickets(
    site: tuple[Config, Store],
) -> None:
    """What the answer reads past the ORM's descriptors is what the descriptors say."""
    from autoresponse.draft import queue_name, ticket_number
    from autoresponse.responder import QueueRef, TicketPreview
    from ticketstore.models import Ticket
    from ticketstore.statements import detached_ticket

    config, store = site
    intake = answering_intake(config, store)
    number = intake.process(*_mail(0, "warm-up")).ticket_number
    with store.factory() as s:
        t = s.execute(select(Ticket).where(Ticket.number == number)).scalar_one()
        s.expire(t, ["queue"])
        assert "queue" not in vars(t)  # not loaded: read through the relationship
        assert (queue_name(t), ticket_number(t)) == ("Support", number)
        values = {c.key: getattr(t, c.key) for c in Ticket.__table__.columns}
    snapshot = detached_ticket(values, "Sales")
    assert (queue_name(snapshot), ticket_number(snapshot)) == ("Sales", number)
    assert snapshot.queue.name == "Sales"
    preview = TicketPreview("t", "new", 3, None, "a@b.example", "b.example", "",
                            QueueRef("Billing"), number="42")
    assert (queue_name(preview), ticket_number(preview)) == ("Billing", "42")
