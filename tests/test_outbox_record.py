"""An answer is one outbox row at intake; its article and event come when it is sent.

The intake transaction writes only the outbox row (every row there is time each worker
waits for the database). The outgoing article (the bytes as sent) and the
`autoresponse-sent` event are written when the smarthost takes the message, and a
reply that quotes the answer's Message-ID threads before and after.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from autoresponse.outbox import Outbox
from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import SmtpSink, answering_intake, build_mail
from tests.support import make_config
from ticketstore.models import Article, Event, OutboxMessage

CUSTOMER = "ana@customer.example"
SUPPORT = "support@helpdesk.example"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def site(tmp_path: Path, db_url: str, sink: SmtpSink) -> Iterator[tuple[Config, Store]]:
    from ticketstore.db import upgrade

    config = make_config(tmp_path, db_url, outbound={"smarthost": sink.smarthost,
                                                     "timeout": 5.0, "retry_base": 0.0})
    store = open_store(config, create=False)
    upgrade(store.engine)
    yield config, store
    store.dispose()


def _count(store: Store, query: object) -> int:
    with store.factory() as s:
        return int(s.execute(query).scalar_one())  # type: ignore[call-overload]


def _new_ticket(intake: Intake) -> str:
    d = intake.process(build_mail(subject="Printer on fire", message_id="q1@customer.example",
                                  sender=CUSTOMER), Envelope(CUSTOMER, (SUPPORT,)))
    assert d.outcome is Outcome.CREATED and d.ticket_number
    return d.ticket_number


def _reply_by_references(intake: Intake, our_id: str, n: int) -> Outcome:
    """The customer answers our reply: tag stripped, only References/In-Reply-To left."""
    raw = build_mail(subject="Re: your message", message_id=f"r{n}@customer.example",
                     sender=CUSTOMER, headers={"In-Reply-To": f"<{our_id}>",
                                               "References": f"<{our_id}>"})
    return intake.process(raw, Envelope(CUSTOMER, (SUPPORT,))).outcome


def test_intake_writes_only_the_outbox_row(site: tuple[Config, Store]) -> None:
    config, store = site
    _new_ticket(answering_intake(config, store))
    [row] = _rows(store)
    assert row.state == "pending" and row.article_id is None
    assert row.template.endswith("new-ticket.txt")
    assert _count(store, select(func.count()).select_from(Article)
                  .where(Article.direction == "out")) == 0
    assert _count(store, select(func.count()).select_from(Event)
                  .where(Event.kind == "autoresponse-sent")) == 0


def test_a_reply_threads_before_and_after_sending(site: tuple[Config, Store]) -> None:
    config, store = site
    intake = answering_intake(config, store)
    _new_ticket(intake)
    [row] = _rows(store)
    assert _reply_by_references(intake, row.message_id, 1) is Outcome.FOLLOW_UP
    assert Outbox(config, store.factory).run_until_idle().sent == 1
    assert _reply_by_references(intake, row.message_id, 2) is Outcome.FOLLOW_UP
    assert _count(store, select(func.count()).select_from(Article)
                  .where(Article.direction == "in")) == 3


def test_sending_records_the_article_and_the_event(site: tuple[Config, Store],
                                                   sink: SmtpSink) -> None:
    config, store = site
    number = _new_ticket(answering_intake(config, store))
    assert Outbox(config, store.factory).run_until_idle().sent == 1
    [received] = sink.received
    [row] = _rows(store)
    with store.factory() as s:
        article = s.execute(select(Article).where(Article.direction == "out")).scalar_one()
        event = s.execute(select(Event).where(Event.kind == "autoresponse-sent")).scalar_one()
    assert row.state == "sent" and row.article_id == article.id
    assert article.ticket_id == row.ticket_id and article.message_id == row.message_id
    assert article.kind == "auto-reply" and article.envelope_recipients == [CUSTOMER]
    assert article.raw == received.data  # the bytes as the smarthost got them
    assert f"[Ticket#{number}]" in article.subject and number in article.body_text
    assert "Printer on fire" in article.body_html
    assert article.in_reply_to == "<q1@customer.example>"
    assert event.article_id == article.id and event.ticket_id == row.ticket_id
    assert event.detail == {"event": "new-ticket", "template": row.template,
                            "to": CUSTOMER, "message_id": row.message_id, "outbox_id": row.id}


def test_a_row_recorded_at_intake_by_an_older_version_gets_nothing_twice(
    site: tuple[Config, Store],
) -> None:
    config, store = site
    _new_ticket(answering_intake(config, store))
    [row] = _rows(store)
    with store.factory() as s, s.begin():
        old = Article(ticket_id=row.ticket_id, direction="out", kind="auto-reply",
                      message_id=row.message_id, content_hash="x", raw=row.message,
                      size=len(row.message), created_at=dt.datetime.now(dt.UTC))
        s.add(old)
        s.flush()
        s.execute(update(OutboxMessage).values(article_id=old.id))
    assert Outbox(config, store.factory).run_until_idle().sent == 1
    assert _count(store, select(func.count()).select_from(Article)
                  .where(Article.direction == "out")) == 1
    assert _count(store, select(func.count()).select_from(Event)
                  .where(Event.kind == "autoresponse-sent")) == 0


def test_a_failed_answer_gets_no_article(site: tuple[Config, Store], sink: SmtpSink) -> None:
    config, store = site
    _new_ticket(answering_intake(config, store))
    sink.set_reply("550 5.1.1 no such user")
    assert Outbox(config, store.factory).run_until_idle().failed == 1
    assert _count(store, select(func.count()).select_from(Article)
                  .where(Article.direction == "out")) == 0
    assert _count(store, select(func.count()).select_from(Event)
                  .where(Event.kind == "autoresponse-sent")) == 0


def _rows(store: Store) -> list[OutboxMessage]:
    with store.factory() as s:
        return list(s.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars())
