"""Answers carry only a short, sanitised part of what the sender wrote (issue 16).

A forged From with a 3,000-character display name carrying a URL and a 1,440-character
subject made an 11,998-byte answer to the victim with the URL 86 times. Each test stores
mail through the real intake and auto-responder on a real database and reads the answer
from the outbox, decoded as a mail program shows it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import update

from autoresponse.sanitize import (
    NAME_LENGTH,
    SUBJECT_LENGTH,
    TEXT_LINES,
    defang,
    short_name,
    short_subject,
    short_text,
)
from gateway.config import Config
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.runtime import Store
from tests.autoresponse_helpers import (
    answer_text,
    answering_intake,
    build_mail,
    outbox_rows,
    suppressed_events,
)
from tests.support import make_config
from ticketstore.models import Ticket

VICTIM = "victim@target.example"
TO_VICTIM = Envelope(VICTIM, ("support@helpdesk.example",))
SPAM_URL = "http://cheap-pills.example/buy?now=1"
SPAM_HOST = "cheap-pills"  # in any spelling of the URL, broken or not


def _spam_name() -> str:
    name = f"WIN A PRIZE {SPAM_URL} " * 100
    return name[:3000]


def _clickable(text: str) -> list[str]:
    """What a mail program would make a link of: a scheme URL or the spammer's host name."""
    return re.findall(r"https?://\S+|cheap-pills\.example", text)


def test_spam_cannon_answer_is_small_and_carries_no_link(config: Config, store: Store) -> None:
    name, subject = _spam_name(), ("Cheap pills today " * 80)[:1440]
    assert len(name) == 3000 and len(subject) == 1440
    raw = build_mail(subject=subject, sender=f'"{name}" <{VICTIM}>')
    d = answering_intake(config, store).process(raw, TO_VICTIM)
    assert d.outcome is Outcome.CREATED
    [row] = outbox_rows(store)
    assert row.rcpt_to == VICTIM
    assert len(row.message) < 4500, len(row.message)  # was 11,998 bytes
    shown = answer_text(row.message)
    assert "text/html" in row.message.decode() and "<a " not in shown.lower()
    assert shown.count(SPAM_HOST) <= 1
    assert _clickable(shown) == []
    # The subject is cut to SUBJECT_LENGTH characters in the Subject and the body.
    subject_line = next(ln for ln in shown.splitlines() if ln.startswith("Subject: "))
    assert len(subject_line) <= len("Subject: [Ticket#2026120710000013] ") + SUBJECT_LENGTH
    assert shown.count("Cheap pills today") <= 3 * (SUBJECT_LENGTH // 17 + 1)


def test_url_in_the_subject_is_not_clickable(config: Config, store: Store) -> None:
    raw = build_mail(subject="Your account: https://phish.example/login now",
                     sender=f"Ana <{VICTIM}>")
    answering_intake(config, store).process(raw, TO_VICTIM)
    [row] = outbox_rows(store)
    shown = answer_text(row.message)
    assert "https[:]//phish[.]example/login" in shown
    assert "phish.example" not in shown and "<a " not in shown.lower()


def test_control_characters_and_length_of_the_name(config: Config, store: Store) -> None:
    name = "=?utf-8?q?Ana=07=1B[31m_Garc=C3=ADa_" + "x" * 200 + "?="
    raw = build_mail(sender=f"{name} <{VICTIM}>")
    answering_intake(config, store).process(raw, TO_VICTIM)
    [row] = outbox_rows(store)
    shown = answer_text(row.message)
    assert "\x07" not in shown and "\x1b" not in shown
    greeting = next(ln for ln in shown.splitlines() if ln.startswith("Hello "))
    assert greeting.startswith("Hello Ana [31m García x")
    assert len(greeting) <= len("Hello ,") + NAME_LENGTH


def test_sanitising_functions() -> None:
    assert defang("see http://a.example/x and www.b.example, c.example") == (
        "see http[:]//a[.]example/x and www[.]b[.]example, c[.]example")
    assert defang("Re: [Ticket#1] 10:30 e.g. v1.2") == "Re: [Ticket#1] 10:30 e.g. v1.2"
    assert short_name(f"Ana {SPAM_URL} García\r\nBcc: x") == "Ana García Bcc: x"
    assert len(short_name("y" * 3000)) == NAME_LENGTH and short_name("y" * 3000)[-1] == "…"
    assert len(short_subject("z" * 1440)) == SUBJECT_LENGTH
    text = short_text("line\n" * 100 + "w" * 5000)
    assert text.count("\n") == TEXT_LINES and text.endswith("…")
    assert max(len(line) for line in short_text("w" * 5000).splitlines()) == 200


def test_an_answer_bigger_than_the_limit_is_refused_with_a_clear_error(
        tmp_path: Path, db_url: str, store: Store) -> None:
    site = tmp_path / "templates" / "default" / "en"
    site.mkdir(parents=True)
    (site / "new-ticket.txt").write_text(
        "{% for i in range(600) %}A line of a template that renders far too much.\n"
        "{% endfor %}", encoding="utf-8")
    config = make_config(tmp_path, db_url, autoresponse={"max_answer_size": 8192})
    d = answering_intake(config, store).process(build_mail(), Envelope(
        "ana@customer.example", ("support@helpdesk.example",)))
    assert d.outcome is Outcome.CREATED  # the customer's mail is kept
    assert outbox_rows(store) == []
    [event] = suppressed_events(store)
    assert event["check"] == "too-large"
    assert re.fullmatch(r"the answer is \d+ bytes, more than autoresponse.max_answer_size = "
                        r"8192 \(default/en/new-ticket.txt\)", str(event["reason"])), event


# -- answers to senders who are not participants reveal nothing of the ticket ----------

SECRET = "CONFIDENTIAL: merger with Initech"
CUSTOMER_NAME = "Ana Customer"


def _ticket_and_follow_up(tmp_path: Path, db_url: str, store: Store, closed_policy: str,
                          close: bool, stranger: bool) -> bytes:
    """A customer's ticket titled SECRET, then a follow-up by its number: from a stranger
    (appended: the queue's stranger_follow_up is "accept") or from the customer."""
    config = make_config(tmp_path, db_url, queues=[{
        "name": "Support", "addresses": ["support@helpdesk.example"], "follow_up_ack": True,
        "follow_up_closed": closed_policy, "stranger_follow_up": "accept"}])
    env = Envelope("ana@customer.example", ("support@helpdesk.example",))
    intake = answering_intake(config, store)
    first = intake.process(
        build_mail(subject=SECRET, sender=f"{CUSTOMER_NAME} <ana@customer.example>"), env)
    if close:
        with store.engine.begin() as conn:
            conn.execute(update(Ticket).where(Ticket.number == first.ticket_number)
                         .values(state="closed"))
    sender = "mallory@evil.example" if stranger else "ana@customer.example"
    d = intake.process(build_mail(
        subject=f"Re: [Ticket#{first.ticket_number}] new bank details",
        sender=f"Mallory <{sender}>" if stranger else f"{CUSTOMER_NAME} <{sender}>",
        message_id="x1@evil.example"), Envelope(sender, env.rcpt_tos))
    assert d.ticket_number == first.ticket_number
    rows = outbox_rows(store)
    assert len(rows) == 2 and rows[1].rcpt_to == sender
    return rows[1].message


@pytest.mark.parametrize(("policy", "close", "kind"), [
    ("reopen", False, "follow-up"), ("reject", True, "reject")])
def test_answer_to_a_stranger_reveals_nothing_of_the_ticket(
        tmp_path: Path, db_url: str, store: Store, policy: str, close: bool,
        kind: str) -> None:
    shown = answer_text(_ticket_and_follow_up(tmp_path, db_url, store, policy, close, True))
    for secret in ("CONFIDENTIAL", "merger", "Initech", CUSTOMER_NAME, "ana@customer",
                   "customer.example", "closed"):
        assert secret not in shown, secret
    assert "Hello Mallory" in shown
    # Their own subject (never the ticket's title) comes back to them.
    assert re.search(r"^Subject: \[Ticket#\d+\] new bank details$", shown, re.M), shown


@pytest.mark.parametrize(("policy", "close"), [("reopen", False), ("reject", True)])
def test_answer_to_a_participant_still_names_the_ticket(
        tmp_path: Path, db_url: str, store: Store, policy: str, close: bool) -> None:
    shown = answer_text(_ticket_and_follow_up(tmp_path, db_url, store, policy, close, False))
    assert SECRET in shown


def test_agent_notifications_carry_the_whole_message_and_are_not_bounded(
        tmp_path: Path, db_url: str, store: Store) -> None:
    site = tmp_path / "templates" / "default" / "en"
    site.mkdir(parents=True)
    (site / "agent-notification.txt").write_text("{{ customer.name }}\n{{ article.text }}\n",
                                                 encoding="utf-8")
    config = make_config(tmp_path, db_url, autoresponse={"max_answer_size": 2048}, queues=[
        {"name": "Support", "addresses": ["support@helpdesk.example"],
         "notify": ["agents@helpdesk.example"]}])
    body = "".join(f"line {i} of a long report, see http://logs.example/{i}\n"
                   for i in range(100))
    answering_intake(config, store).process(
        build_mail(sender=f'"{_spam_name()}" <{VICTIM}>', body=body), TO_VICTIM)
    rows = {r.rcpt_to: r for r in outbox_rows(store)}
    agents = answer_text(rows["agents@helpdesk.example"].message)
    assert len(rows["agents@helpdesk.example"].message) > 2048
    assert "line 99 of a long report, see http://logs.example/99" in agents
    assert _spam_name().strip() in agents
    # The customer's answer is bounded: made within the limit or refused as too-large.
    assert VICTIM not in rows or len(rows[VICTIM].message) <= 2048
