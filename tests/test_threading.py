"""Follow-up detection on SQLite and PostgreSQL: subject tags, references, policies, idempotency.

The clock is fixed at 2026-11-22, so the first ticket of a fresh database is always
2026112210000013: the number the reply fixtures carry in their subjects.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from gateway.intake.core import Intake
from gateway.intake.outcome import Disposition, Outcome
from gateway.intake.ports import StoredMessage
from gateway.mail.envelope import Envelope
from gateway.runtime import open_store
from tests.support import mail, make_config
from ticketstore import numbers
from ticketstore.db import upgrade
from ticketstore.models import Article, Event, Ticket

NOW = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
N = "2026112210000013"
SECOND = "2026112210000022"
ORIG = "4f1c2a9e-1d3b-4c8e-9a51-7e2b0c6d1a01@customer.example"
AUTOREPLY = f"ticketgate.{N}.a1@helpdesk.example"
SUPPORT = "support@helpdesk.example"
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")

MakeIntake = Callable[..., Intake]


@pytest.fixture
def make_intake(tmp_path: Path, db_url: str) -> Iterator[MakeIntake]:
    """Intakes on one fresh database, each with its own config sections."""
    stores = []
    upgraded = False

    def make(**sections: Any) -> Intake:
        nonlocal upgraded
        config = make_config(tmp_path, db_url, **sections)
        store = open_store(config, create=False)
        if not upgraded:
            upgrade(store.engine)
            upgraded = True
        stores.append(store)
        intake = Intake(config, store.factory, clock=lambda: NOW)
        intake.sync_queues()
        return intake

    yield make
    for s in stores:
        s.dispose()


@pytest.fixture
def intake(make_intake: MakeIntake) -> Intake:
    return make_intake()


def deliver(intake: Intake, raw: bytes | str, *rcpt: str, sender: str | None = None
            ) -> Disposition:
    if isinstance(raw, str):
        raw = mail(raw)
    return intake.process(raw, Envelope(sender, rcpt or (SUPPORT,)))


def message(subject: str, body: str = "Hallo", msgid: str | None = None,
            extra: str = "") -> bytes:
    """A minimal plain message; `subject` is put in verbatim (may be encoded words)."""
    mid = msgid or f"<{hashlib.sha1((subject + body + extra).encode()).hexdigest()}@c.example>"
    return (f"From: Kim Lee <kim@customer.example>\nTo: {SUPPORT}\nSubject: {subject}\n"
            f"Message-ID: {mid}\n{extra}MIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}\n").encode()


def without_threading_headers(raw: bytes) -> bytes:
    """The message with In-Reply-To and References removed (folded lines too)."""
    head, sep, body = raw.partition(b"\n\n")
    lines = head.split(b"\n")
    kept: list[bytes] = []
    skipping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = bool(re.match(rb"(?i)(in-reply-to|references):", line))
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def ticket(intake: Intake, number: str) -> Ticket:
    with intake.factory() as s:
        t = s.execute(select(Ticket).where(Ticket.number == number)).scalar_one()
        s.expunge_all()
        return t


def articles(intake: Intake, number: str) -> list[Article]:
    with intake.factory() as s:
        rows = s.execute(
            select(Article).join(Ticket).where(Ticket.number == number).order_by(Article.id)
        ).scalars().all()
        s.expunge_all()
        return list(rows)


def events(intake: Intake, number: str) -> list[str]:
    """The ticket's history, but who joined it (tests/test_participants.py checks that)."""
    with intake.factory() as s:
        return list(s.execute(
            select(Event.kind).join(Ticket, Event.ticket_id == Ticket.id)
            .where(Ticket.number == number, Event.kind != "participants-added")
            .order_by(Event.id)
        ).scalars())


def count(intake: Intake, model: type) -> int:
    with intake.factory() as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


def set_state(intake: Intake, number: str, state: str) -> None:
    with intake.factory() as s, s.begin():
        t = s.execute(select(Ticket).where(Ticket.number == number)).scalar_one()
        t.state = state
        t.closed_at = NOW if state == "closed" else None


def store_autoreply(intake: Intake, number: str, message_id: str = AUTOREPLY) -> None:
    """What the auto-responder leaves behind: an outgoing article with our Message-ID."""
    with intake.factory() as s, s.begin():
        t = s.execute(select(Ticket).where(Ticket.number == number)).scalar_one()
        raw = f"Message-ID: <{message_id}>\nSubject: [Ticket#{number}] ack\n\nok\n".encode()
        s.add(Article(ticket=t, direction="out", kind="auto-reply", message_id=message_id,
                      content_hash=hashlib.sha256(raw).hexdigest(), raw=raw, size=len(raw),
                      subject=f"[Ticket#{number}] ack", created_at=NOW))


@pytest.fixture
def opened(intake: Intake) -> Intake:
    """The original message stored as ticket N, plus our auto-response to it."""
    d = deliver(intake, "new_ticket_de.eml")
    assert (d.outcome, d.ticket_number) == (Outcome.CREATED, N)
    store_autoreply(intake, N)
    return intake


# -- the original -------------------------------------------------------------------------


def test_original_creates_the_expected_ticket(intake: Intake) -> None:
    d = deliver(intake, "new_ticket_de.eml", sender="ana.mueller@customer.example")
    assert (d.outcome, d.ticket_number, d.queue) == (Outcome.CREATED, N, "Support")
    assert d.message_id == ORIG
    t = ticket(intake, N)
    assert t.title == "Drucker im Büro druckt nur Streifen"
    assert (t.state, t.priority) == ("new", 3)
    assert (t.customer_address, t.customer_name, t.customer_domain) == (
        "ana.mueller@customer.example", "Ana Müller", "customer.example")
    (a,) = articles(intake, N)
    assert a.raw == mail("new_ticket_de.eml")
    assert a.envelope_sender == "ana.mueller@customer.example"
    assert events(intake, N) == ["created"]


# -- every reply format threads -------------------------------------------------------------

REPLIES = [
    "reply_outlook_aw.eml",  # References only, no tag
    "reply_outlook_re.eml",  # References only, no tag
    "reply_gmail.eml",
    "reply_apple_mail.eml",
    "reply_thunderbird.eml",
    "reply_mobile_no_tag.eml",  # In-Reply-To only, no tag
    "forward_wg_ticket_colon.eml",  # tag only ("Ticket#: N"), no threading headers
    "long_headers.eml",
]


@pytest.mark.parametrize("name", REPLIES)
def test_reply_threads_onto_the_ticket(opened: Intake, name: str) -> None:
    d = deliver(opened, name)
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    assert [a.direction for a in articles(opened, N)] == ["in", "out", "in"]
    assert events(opened, N) == ["created", "follow-up"]
    assert count(opened, Ticket) == 1


def test_whole_conversation_lands_on_one_ticket(opened: Intake) -> None:
    for name in REPLIES:
        assert deliver(opened, name).ticket_number == N
    assert count(opened, Ticket) == 1
    assert len(articles(opened, N)) == 2 + len(REPLIES)


def test_subject_tag_alone_threads(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    for name in ["reply_gmail.eml", "reply_apple_mail.eml", "reply_thunderbird.eml",
                 "forward_wg_ticket_colon.eml", "long_headers.eml"]:
        raw = without_threading_headers(mail(name))
        assert b"In-Reply-To" not in raw and b"References" not in raw
        assert deliver(intake, raw).ticket_number == N, name


def test_tagless_reply_without_references_is_a_new_ticket(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    for name in ["reply_outlook_aw.eml", "reply_outlook_re.eml", "reply_mobile_no_tag.eml"]:
        d = deliver(intake, without_threading_headers(mail(name)))
        assert d.outcome is Outcome.CREATED, name
        assert d.ticket_number != N, name


def test_reply_to_our_own_outgoing_message_id_threads(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    raw = message("Re: Ihre Anfrage", extra=f"In-Reply-To: <{AUTOREPLY}>\n")
    assert deliver(intake, raw).outcome is Outcome.CREATED  # not stored yet: no match
    store_autoreply(intake, N)
    raw = message("Re: Ihre Anfrage", body="again", extra=f"In-Reply-To: <{AUTOREPLY}>\n")
    assert deliver(intake, raw).ticket_number == N


def test_references_nearest_first(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    other = deliver(intake, message("Other problem", msgid="<other@c.example>"))
    raw = message("Re: both", extra=f"References: <{ORIG}> <other@c.example>\n")
    assert deliver(intake, raw).ticket_number == other.ticket_number


# -- subject tags -----------------------------------------------------------------------------

PREFIXES = ["Re:", "RE:", "AW:", "WG:", "Fwd:", "FW:", "SV:", "VS:", "Antw:", "Odp:", "RV:",
            "R:", "回复:", "答复:", "Re: AW: WG:", "AW:AW:AW:", "Re[3]:"]


def test_tag_with_reply_prefixes(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    for prefix in PREFIXES:
        d = deliver(intake, message(f"{prefix} [Ticket#{N}] Drucker"))
        assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N), prefix


TAG_FORMS = [
    f"Ticket#: {N} Drucker",
    f"Ticket# {N} Drucker",
    f"Drucker (Ticket#{N})",
    f"Drucker ... [Ticket#{N}]",
    f"AW: [Ticket#{N}] Re: [Ticket#{N}] Drucker",
    "=?UTF-8?B?UmU6IFtUaWNrZXQjMjAyNjExMjIxMDAwMDAxM10gRHJ1Y2tlciBpbSBCw7xybw==?=",
    "=?UTF-8?Q?Re=3A_=5BTicket=2320261122?= =?UTF-8?Q?10000013=5D_B=C3=BCro?=",
    "=?ISO-8859-1?Q?AW:_[Ticket#2026112210000013]_B=FCro?=",
    "Re: ［Ｔｉｃｋｅｔ＃" + N.translate(FULLWIDTH) + "］ 件名",
]


def test_tag_forms_thread(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    for subject in TAG_FORMS:
        assert deliver(intake, message(subject)).ticket_number == N, subject


def test_wrong_check_digit_does_not_thread(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    wrong = N[:-1] + "4"
    assert not numbers.is_plausible("date-checksum", wrong)
    d = deliver(intake, message(f"Re: [Ticket#{wrong}] Drucker"))
    assert (d.outcome, d.ticket_number) == (Outcome.CREATED, SECOND)


def test_nonexistent_number_does_not_thread(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    other = numbers.format_number("date-checksum", "10", 99, NOW.date())
    d = deliver(intake, message(f"Re: [Ticket#{other}] Drucker"))
    assert (d.outcome, d.ticket_number) == (Outcome.CREATED, SECOND)


def test_first_existing_number_wins_over_a_bogus_one(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    bogus = N[:-1] + "4"
    assert deliver(intake, message(f"[Ticket#{bogus}] [Ticket#{N}] x")).ticket_number == N


def test_subject_tag_beats_references(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    other = deliver(intake, message("Other", msgid="<other@c.example>"))
    raw = message(f"Re: [Ticket#{other.ticket_number}] x", extra=f"References: <{ORIG}>\n")
    assert deliver(intake, raw).ticket_number == other.ticket_number


def test_body_number_alone_does_not_thread_by_default(intake: Intake) -> None:
    deliver(intake, "new_ticket_de.eml")
    d = deliver(intake, message("Noch eine Frage", body=f"Betrifft [Ticket#{N}]"))
    assert d.outcome is Outcome.CREATED


def test_body_number_threads_when_body_threading_is_on(make_intake: MakeIntake) -> None:
    intake = make_intake(tickets={"body_threading": True})
    deliver(intake, "new_ticket_de.eml")
    d = deliver(intake, message("Noch eine Frage", body=f"Betrifft [Ticket#{N}]"))
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)


def test_custom_hook(make_intake: MakeIntake) -> None:
    intake = make_intake(tickets={"hook": "Anfrage#"})
    deliver(intake, "new_ticket_de.eml")
    assert deliver(intake, message(f"AW: [Anfrage#{N}] x")).ticket_number == N
    assert deliver(intake, message(f"AW: [Ticket#{N}] y")).outcome is Outcome.CREATED


# -- closed tickets -------------------------------------------------------------------------


def test_closed_ticket_reopens_by_default(opened: Intake) -> None:
    set_state(opened, N, "closed")
    d = deliver(opened, "reply_gmail.eml")
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    t = ticket(opened, N)
    assert (t.state, t.closed_at) == ("open", None)
    assert events(opened, N) == ["created", "reopened", "follow-up"]


class _Recorder:
    def __init__(self) -> None:
        self.stored: list[StoredMessage] = []

    def after_store(self, conn: Connection, stored: StoredMessage) -> None:
        self.stored.append(stored)


def test_the_responder_sees_the_ticket_as_written(opened: Intake) -> None:
    """Snapshots carry the row after this message's changes: reopened, updated now."""
    set_state(opened, N, "closed")
    recorder = _Recorder()
    opened.responder = recorder  # type: ignore[assignment]
    d = deliver(opened, "reply_gmail.eml")
    (stored,) = recorder.stored
    assert (stored.ticket.number, stored.ticket.state, stored.ticket.closed_at) == (N, "open", None)
    assert (stored.ticket.queue.name, stored.ticket.updated_at) == ("Support", NOW)
    assert stored.closed_policy == "reopen" and stored.outcome is Outcome.FOLLOW_UP
    assert (stored.article.id, stored.article.ticket_id) == (d.article_id, stored.ticket.id)
    assert stored.article.raw == mail("reply_gmail.eml")


def test_vacation_notice_does_not_reopen(opened: Intake) -> None:
    set_state(opened, N, "closed")
    raw = message(f"Out of office: [Ticket#{N}] Drucker",
                  extra="Auto-Submitted: auto-replied\n")
    d = deliver(opened, raw)
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    assert ticket(opened, N).state == "closed"


def test_closed_ticket_in_reject_queue_stores_and_records_rejection(intake: Intake) -> None:
    first = deliver(intake, message("Angebot", msgid="<offer@c.example>"),
                    "sales@helpdesk.example")
    assert first.queue == "Sales"
    set_state(intake, first.ticket_number, "closed")
    d = deliver(intake, message(f"Re: [Ticket#{first.ticket_number}] Angebot"),
                "sales@helpdesk.example")
    assert (d.outcome, d.ticket_number) == (Outcome.REJECTED, first.ticket_number)
    assert ticket(intake, first.ticket_number).state == "closed"
    assert len(articles(intake, first.ticket_number)) == 2
    assert events(intake, first.ticket_number) == ["created", "rejected", "follow-up"]


def test_closed_ticket_in_new_ticket_queue_opens_a_linked_ticket(intake: Intake) -> None:
    first = deliver(intake, "new_de_latin1_qp.eml", "billing@helpdesk.example")
    assert first.queue == "Billing"
    set_state(intake, first.ticket_number, "closed")
    # The customer's own reply (a stranger's gets a linked ticket too, for another reason:
    # tests/test_participants.py).
    reply = message(f"AW: [Ticket#{first.ticket_number}] Rechnung").replace(
        b"kim@customer.example", b"j.weiss@firma.example")
    d = deliver(intake, reply, "billing@helpdesk.example")
    assert d.outcome is Outcome.CREATED and d.ticket_number != first.ticket_number
    new, old = ticket(intake, d.ticket_number), ticket(intake, first.ticket_number)
    assert new.linked_ticket_id == old.id
    assert old.state == "closed"
    assert len(articles(intake, old.number)) == 1
    assert events(intake, old.number) == ["created", "linked"]
    assert events(intake, new.number) == ["linked", "created"]


# -- queues ------------------------------------------------------------------------------


RECIPIENT_QUEUES = [
    ("support@helpdesk.example", "Support"),
    ("SUPPORT@Helpdesk.Example", "Support"),
    ("billing@helpdesk.example", "Billing"),
    ("support+billing@helpdesk.example", "Billing"),  # plus tag names a queue
    ("support+Sales@helpdesk.example", "Sales"),
    ("support+vip@helpdesk.example", "Support"),  # unknown tag: the address's queue
    ("someone@elsewhere.example", "Postmaster"),  # default queue
]


def test_recipient_to_queue(intake: Intake) -> None:
    for rcpt, queue in RECIPIENT_QUEUES:
        assert deliver(intake, message(f"to {rcpt}"), rcpt).queue == queue, rcpt


def test_first_known_recipient_decides(intake: Intake) -> None:
    d = deliver(intake, message("x"), "nobody@x.example", "sales@helpdesk.example",
                "support@helpdesk.example")
    assert d.queue == "Sales"


def test_without_envelope_recipients_the_headers_decide(intake: Intake) -> None:
    d = intake.process(mail("duplicate_delivery_2.eml"), Envelope(None, ()))
    assert d.queue == "Support"  # Delivered-To
    d = intake.process(mail("new_de_latin1_qp.eml"), Envelope(None, ()))
    assert d.queue == "Billing"  # To


def test_configured_default_queue(make_intake: MakeIntake) -> None:
    intake = make_intake(tickets={"default_queue": "Inbox"})
    assert deliver(intake, message("x"), "who@else.example").queue == "Inbox"


def test_follow_up_stays_in_its_queue_whatever_the_recipient(opened: Intake) -> None:
    d = deliver(opened, "reply_gmail.eml", "billing@helpdesk.example")
    assert (d.ticket_number, d.queue) == (N, "Support")


# -- idempotency --------------------------------------------------------------------------


def test_same_message_twice_is_one_article(intake: Intake) -> None:
    first = deliver(intake, "new_ticket_de.eml")
    again = deliver(intake, "new_ticket_de.eml")
    assert again.outcome is Outcome.DUPLICATE
    assert (again.ticket_number, again.article_id) == (first.ticket_number, first.article_id)
    assert count(intake, Article) == 1 and count(intake, Ticket) == 1


def test_crlf_and_trace_headers_still_duplicate(intake: Intake) -> None:
    first = deliver(intake, "duplicate_delivery_1.eml")
    second = deliver(intake, "duplicate_delivery_2.eml")
    assert second.outcome is Outcome.DUPLICATE
    assert second.article_id == first.article_id
    mbox = b"From olga.nowak@klient.example Mon Nov 30 08:15:04 2026\n" + mail(
        "duplicate_delivery_1.eml")
    assert deliver(intake, mbox).outcome is Outcome.DUPLICATE
    assert count(intake, Article) == 1


def test_same_message_id_with_other_content_is_not_a_duplicate(intake: Intake) -> None:
    deliver(intake, message("x", body="one", msgid="<same@c.example>"))
    d = deliver(intake, message("x", body="two", msgid="<same@c.example>"))
    assert d.outcome is not Outcome.DUPLICATE
    assert count(intake, Article) == 2


def test_missing_message_id_gets_a_stable_derived_one(intake: Intake) -> None:
    first = deliver(intake, "missing_message_id.eml")
    assert first.message_id.endswith("@ticketgate.invalid")
    again = deliver(intake, mail("missing_message_id.eml").replace(b"\n", b"\r\n"))
    assert again.outcome is Outcome.DUPLICATE
    assert again.message_id == first.message_id
    (a,) = articles(intake, first.ticket_number or "")
    assert a.message_id == first.message_id
    other = deliver(intake, mail("missing_message_id.eml") + b"another page\n")
    assert other.outcome is Outcome.CREATED and other.message_id != first.message_id


def test_ticket_numbers_increase(intake: Intake) -> None:
    got = [deliver(intake, message(f"Problem {i}")).ticket_number for i in range(5)]
    expected = [numbers.format_number("date-checksum", "10", i, NOW.date())
                for i in range(1, 6)]
    assert got == expected
    assert got == sorted(got)


def test_autoincrement_numbers_thread_without_a_check_digit(make_intake: MakeIntake) -> None:
    intake = make_intake(tickets={"generator": "autoincrement", "system_id": "7"})
    d = deliver(intake, message("first"))
    assert d.ticket_number == "700001"
    assert deliver(intake, message("Re: [Ticket#700001] first")).ticket_number == "700001"
