"""Participants and strangers through the intake, on SQLite and PostgreSQL.

A stranger who only knows a ticket number must not get into the customer's ticket
(issue 16): under the default policy they get a linked ticket of their own; `accept`
appends and flags, `hold` keeps the message apart. The customer, a colleague at the
company's domain and a Cc'd partner thread without friction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

from gateway.config import ConfigError
from gateway.intake.core import Intake
from gateway.intake.followup import MAX_MESSAGE_IDS, reference_ids
from gateway.intake.outcome import Disposition, Outcome
from gateway.intake.participants import freemail_domains, mailbox
from gateway.intake.ports import Route, Router, StoredMessage
from gateway.intake.release import ReleaseError, discard_held, release_held
from gateway.intake.transaction import store_alone
from gateway.mail.classify import Classification
from gateway.mail.envelope import Envelope
from gateway.mail.parse import ParsedMessage
from gateway.mail.verdict import SenderVerdict
from gateway.runtime import open_store
from tests.participants_helpers import (
    AGENT,
    OPENING_ID,
    SUPPORT,
    held,
    opening,
    participants,
    reply,
    ticket_articles,
    ticket_events,
)
from tests.support import make_config
from ticketstore.db import upgrade
from ticketstore.models import OutboxMessage, Ticket

NOW = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
N = "2026112210000013"
STRANGER = "Ana Ruiz <mallory@evil.example>"  # the customer's display name, forged


class Recorder:
    """A responder that remembers what the intake told it."""

    def __init__(self) -> None:
        self.seen: list[StoredMessage] = []

    def after_store(self, conn: Connection, stored: StoredMessage) -> None:
        self.seen.append(stored)

    def warm_up(self, conn: Connection) -> None:
        return None


MakeIntake = Callable[..., Intake]


@pytest.fixture
def make_intake(tmp_path: Path, db_url: str) -> Iterator[MakeIntake]:
    stores = []

    def make(policy: str = "new-ticket", router: Router | None = None,
             **sections: Any) -> Intake:
        queues = [{"name": "Support", "addresses": [SUPPORT], "stranger_follow_up": policy},
                  {"name": "Sales", "addresses": ["sales@helpdesk.example"]}]
        sections.setdefault("participants", {"agents": [AGENT]})
        config = make_config(tmp_path, db_url, queues=queues, **sections)
        store = open_store(config, create=False)
        if not stores:
            upgrade(store.engine)
        stores.append(store)
        intake = Intake(config, store.factory, router=router, responder=Recorder(),
                        clock=lambda: NOW)
        intake.sync_queues()
        return intake

    yield make
    for s in stores:
        s.dispose()


def deliver(intake: Intake, raw: bytes, verdict: SenderVerdict | None = None) -> Disposition:
    p = intake.prepare(raw, Envelope("bounce@sender.example", (SUPPORT,)))
    if verdict is not None:
        p = dataclasses.replace(p, verdict=verdict)
    return store_alone(intake.engine, intake, p)


def opened(intake: Intake) -> Intake:
    d = deliver(intake, opening())
    assert (d.outcome, d.ticket_number) == (Outcome.CREATED, N)
    return intake


def responder(intake: Intake) -> Recorder:
    assert isinstance(intake.responder, Recorder)
    return intake.responder


def the_ticket(intake: Intake, number: str = N) -> Ticket:
    with intake.factory() as s:
        t = s.execute(select(Ticket).where(Ticket.number == number)).scalar_one()
        s.expunge_all()
        return t


# -- who takes part --------------------------------------------------------------------


def test_the_opening_mail_makes_its_people_participants_but_not_ours(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    with intake.factory() as s:
        assert participants(s, N) == {"ana@customer.example": "customer",
                                      "pat@partner.example": "cc"}
        (added,) = [e for e in ticket_events(s, N) if e.kind == "participants-added"]
    assert added.detail == {"added": [{"address": "ana@customer.example", "source": "customer"},
                                      {"address": "pat@partner.example", "source": "cc"}],
                            "by": "message", "message_id": OPENING_ID}


def test_reply_to_is_a_participant_too(make_intake: MakeIntake) -> None:
    intake = make_intake()
    raw = opening().replace(b"Cc: ", b"Reply-To: ana.private@gmail.com\nCc: ")
    deliver(intake, raw)
    with intake.factory() as s:
        assert participants(s, N)["ana.private@gmail.com"] == "reply-to"


@pytest.mark.parametrize("sender", [
    "Ana Ruiz <ana@customer.example>",  # the customer
    "ANA+support@Customer.Example.",  # the same mailbox, spelt otherwise
    "Ben Colleague <ben@customer.example>",  # a colleague at the company's domain
    "Pat Partner <pat@partner.example>",  # Cc'd on the opening mail
])
def test_participants_thread_by_number_without_friction(make_intake: MakeIntake,
                                                        sender: str) -> None:
    intake = opened(make_intake())
    d = deliver(intake, reply(sender, N, body="thanks, see attached"))
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    assert responder(intake).seen[-1].sender_is_participant
    with intake.factory() as s:
        (_, a) = ticket_articles(s, N)
        assert not a.from_stranger
        assert ticket_events(s, N)[-1].detail["threaded_by"] == "number"


def test_our_agents_write_to_every_ticket_but_never_join_one(make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    d = deliver(intake, reply(f"Kai <{AGENT}>", N, body="we are on it"))
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    with intake.factory() as s:
        assert AGENT not in participants(s, N)


def test_a_participants_cc_joins_and_can_then_write(make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    raw = reply("ana@customer.example", N, extra="Cc: Lee Lawyer <lee@law.example>\n")
    assert deliver(intake, raw).outcome is Outcome.FOLLOW_UP
    with intake.factory() as s:
        assert participants(s, N)["lee@law.example"] == "cc"
        assert ticket_events(s, N)[-1].detail["added"] == [
            {"address": "lee@law.example", "source": "cc"}]
    assert deliver(intake, reply("lee@law.example", N)).ticket_number == N


def test_same_domain_off_and_free_mail_domains_need_the_exact_address(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake(participants={"same_domain": False}))
    d = deliver(intake, reply("ben@customer.example", N))
    assert d.outcome is Outcome.CREATED and d.ticket_number != N

    free = make_intake(participants={"same_domain": True})
    d = deliver(free, opening().replace(b"ana@customer.example", b"ana@gmail.com")
                .replace(OPENING_ID.encode(), b"free-1@gmail.com"))
    second = d.ticket_number
    assert second is not None
    d = deliver(free, reply("someone.else@gmail.com", second))
    assert d.outcome is Outcome.CREATED and d.ticket_number != second
    assert deliver(free, reply("Ana@GMail.com", second)).ticket_number == second


def test_mailboxes_and_the_free_mail_list(tmp_path: Path) -> None:
    assert mailbox(" <Ana+Billing@Customer.Example.> ") == "ana@customer.example"
    assert mailbox("+x@a.example") == "+x@a.example"  # no base: kept as written
    config = make_config(tmp_path, "sqlite://")
    assert {"gmail.com", "outlook.com", "gmx.de"} <= freemail_domains(config)
    mine = tmp_path / "free.txt"
    mine.write_text("# ours\nmail.example  # a comment\n", "utf-8")
    config = make_config(tmp_path, "sqlite://", participants={
        "freemail_file": str(mine), "freemail_domains": ["Extra.Example"]})
    assert freemail_domains(config) == {"mail.example", "extra.example"}


@pytest.mark.parametrize(("section", "message"), [
    ({"queues": [{"name": "S", "stranger_follow_up": "ignore"}]},
     "queues[0].stranger_follow_up: must be one of new-ticket, accept, hold"),
    ({"participants": {"freemail_file": "nope.txt"}}, "participants.freemail_file"),
    ({"participants": {"agents": ["not an address"]}}, "participants.agents[0]"),
    ({"participants": {"freemail_domains": ["a@b"]}}, "participants.freemail_domains[0]"),
])
def test_bad_participant_settings_are_named(tmp_path: Path, section: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_config(tmp_path, "sqlite://", **section)


# -- strangers -------------------------------------------------------------------------


def test_a_strangers_follow_up_gets_its_own_linked_ticket_by_default(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    before = the_ticket(intake)
    d = deliver(intake, reply(STRANGER, N, extra="Cc: accomplice@evil.example\n"))
    assert d.outcome is Outcome.CREATED and d.ticket_number != N
    new, old = the_ticket(intake, d.ticket_number), the_ticket(intake)
    assert new.linked_ticket_id == old.id and new.customer_address == "mallory@evil.example"
    assert new.title == "merger"  # the old ticket's tag is not carried over
    assert (old.state, old.updated_at, old.tags) == (before.state, before.updated_at, before.tags)
    with intake.factory() as s:
        assert len(ticket_articles(s, N)) == 1
        assert set(participants(s, N)) == {"ana@customer.example", "pat@partner.example"}
        assert set(participants(s, d.ticket_number)) == {"mallory@evil.example",
                                                          "accomplice@evil.example"}
        event = ticket_events(s, N)[-1]
        assert event.kind == "stranger-follow-up" and event.article_id is None
        assert event.detail["from"] == "mallory@evil.example"
        assert event.detail["new_ticket"] == d.ticket_number
        assert (event.detail["policy"], event.detail["path"]) == ("new-ticket", "number")
        assert [e.kind for e in ticket_events(s, d.ticket_number)][:2] == ["linked", "created"]
    # The stranger is the customer of their own ticket: told about it, not about N.
    stored = responder(intake).seen[-1]
    assert stored.ticket.number == d.ticket_number and stored.sender_is_participant


def test_accept_appends_the_strangers_mail_flagged(make_intake: MakeIntake) -> None:
    intake = opened(make_intake("accept"))
    d = deliver(intake, reply(STRANGER, N, extra="Cc: accomplice@evil.example\n"))
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    assert not responder(intake).seen[-1].sender_is_participant
    with intake.factory() as s:
        (_, a) = ticket_articles(s, N)
        assert a.from_stranger and a.from_address == "mallory@evil.example"
        kinds = [(e.kind, e.article_id) for e in ticket_events(s, N)]
        assert ("stranger-follow-up", a.id) in kinds and ("follow-up", a.id) in kinds
        assert "accomplice@evil.example" not in participants(s, N)


class Closer:
    """A rule that tags and closes follow-ups (the forged monitoring RECOVERY)."""

    def route(self, msg: ParsedMessage, envelope: Envelope,
              classification: Classification, verdict: object = None) -> Route:
        if msg.subject.startswith("Re:"):
            return Route(state="closed", tags=("monitoring",), matched=("recovery",))
        return Route()


def test_an_accepted_strangers_mail_changes_nothing_a_rule_asks(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake("accept", router=Closer()))
    assert deliver(intake, reply(STRANGER, N)).ticket_number == N
    t = the_ticket(intake)
    assert (t.state, t.tags) == ("new", [])
    assert deliver(intake, reply("ana@customer.example", N)).ticket_number == N
    t = the_ticket(intake)
    assert (t.state, t.tags) == ("closed", ["monitoring"])  # the customer's may


@pytest.mark.parametrize("policy", ["new-ticket", "accept", "hold"])
def test_a_stranger_cannot_reopen_a_closed_ticket(make_intake: MakeIntake,
                                                   policy: str) -> None:
    intake = opened(make_intake(policy))
    with intake.factory() as s, s.begin():
        s.execute(select(Ticket)).scalar_one().state = "closed"
    deliver(intake, reply(STRANGER, N, body="please reopen"))
    assert the_ticket(intake).state == "closed"
    # ...while the customer still can (follow_up_closed = reopen).
    deliver(intake, reply("ana@customer.example", N, body="please reopen"))
    assert the_ticket(intake).state == "open"


def test_hold_keeps_the_message_apart_until_released(make_intake: MakeIntake) -> None:
    intake = opened(make_intake("hold"))
    raw = reply(STRANGER, N)
    d = deliver(intake, raw)
    assert (d.outcome, d.ticket_number) == (Outcome.HELD, None)
    assert deliver(intake, raw).outcome is Outcome.DUPLICATE  # the MTA retrying
    with intake.factory() as s:
        (h,) = held(s)
        assert (h.state, h.from_address, h.raw) == ("held", "mallory@evil.example", raw)
        assert len(ticket_articles(s, N)) == 1
        event = ticket_events(s, N)[-1]
        assert (event.kind, event.detail["held_id"]) == ("stranger-follow-up", h.id)
    assert len(responder(intake).seen) == 1  # nothing answered for the held message
    with intake.engine.begin() as conn:
        done = release_held(intake, conn, h.id)
    assert done.ticket_number == N
    assert not responder(intake).seen[-1].sender_is_participant
    with intake.factory() as s:
        (_, a) = ticket_articles(s, N)
        assert a.from_stranger and a.raw == raw
        assert held(s)[0].state == "released"
        assert ticket_events(s, N)[-1].kind == "held-released"
    with pytest.raises(ReleaseError, match="already released"), intake.engine.begin() as conn:
        release_held(intake, conn, h.id)
    assert deliver(intake, raw).outcome is Outcome.DUPLICATE


def test_held_messages_can_go_to_another_ticket_or_be_discarded(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake("hold"))
    other = deliver(intake, reply("zoe@other.example", "0", subject="Another matter"))
    deliver(intake, reply(STRANGER, N, body="one"))
    deliver(intake, reply(STRANGER, N, body="two"))
    with intake.factory() as s:
        first, second = (h.id for h in held(s))
    with intake.engine.begin() as conn:
        assert release_held(intake, conn, first, other.ticket_number).ticket_number == (
            other.ticket_number)
    with pytest.raises(ReleaseError, match="no ticket 999"), intake.engine.begin() as conn:
        release_held(intake, conn, second, "999")
    ticket_id = the_ticket(intake).id
    with intake.engine.begin() as conn:
        assert discard_held(conn, second, NOW) == ticket_id
    with intake.factory() as s:
        assert [(h.state, len(h.raw)) for h in held(s)][1] == ("discarded", 0)
        assert ticket_events(s, N)[-1].kind == "held-discarded"
        assert len(ticket_articles(s, N)) == 1
    with pytest.raises(ReleaseError, match="no held message"), intake.engine.begin() as conn:
        release_held(intake, conn, 4242)


# -- proof -----------------------------------------------------------------------------


def our_answer(intake: Intake) -> str:
    """The Message-ID of our auto-response to the ticket, waiting in the outbox."""
    ours = f"ticketgate.{N}.a1@helpdesk.example"
    with intake.factory() as s, s.begin():
        s.add(OutboxMessage(ticket_id=the_ticket(intake).id, kind="auto-reply",
                            rcpt_to="ana@customer.example", message_id=ours, message=b"x"))
    return ours


def test_a_reply_with_only_references_to_our_auto_response_threads(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    ours = our_answer(intake)
    raw = reply("Ana <ana@customer.example>", N, subject="Re: your request",
                extra=f"References: <{ours}>\n")
    d = deliver(intake, raw)
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    with intake.factory() as s:
        assert ticket_events(s, N)[-1].detail["threaded_by"] == "proof"


def test_a_reply_by_proof_threads_whoever_sent_it_and_they_join(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    raw = reply("Fwd Reader <reader@elsewhere.example>", N,
                extra=f"In-Reply-To: <{OPENING_ID}>\n")
    assert deliver(intake, raw).ticket_number == N
    assert responder(intake).seen[-1].sender_is_participant
    with intake.factory() as s:
        assert participants(s, N)["reader@elsewhere.example"] == "from"


def test_a_bounce_of_our_answer_threads_though_its_sender_takes_no_part(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    ours = our_answer(intake)
    bounce = (
        "From: MAILER-DAEMON@mx.customer.example\nTo: support@helpdesk.example\n"
        f"Subject: Undelivered Mail Returned to Sender: [Ticket#{N}] merger\n"
        "Message-ID: <bounce-1@mx.customer.example>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nMailbox full.\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
        "Final-Recipient: rfc822; ana@customer.example\nAction: failed\nStatus: 5.2.2\n"
        f"--b\nContent-Type: message/rfc822\n\nMessage-ID: <{ours}>\n"
        f"Subject: [Ticket#{N}] merger\n\nWe got your mail.\n--b--\n").encode()
    p = intake.prepare(bounce, Envelope("", (SUPPORT,)))
    d = store_alone(intake.engine, intake, p)
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    with intake.factory() as s:
        assert ticket_events(s, N)[-1].detail["threaded_by"] == "bounce"


def test_a_long_references_header_is_read_from_both_ends(make_intake: MakeIntake) -> None:
    intake = opened(make_intake())
    refs = [OPENING_ID] + [f"r{i}@corp.example" for i in range(64)]
    header = "References:" + "".join(f"\n <{r}>" for r in refs) + "\n"
    raw = reply("ana@customer.example", N, subject="RE: AW: WG: merger", extra=header)
    d = deliver(intake, raw)
    assert (d.outcome, d.ticket_number) == (Outcome.FOLLOW_UP, N)
    p = intake.prepare(raw, Envelope(None, (SUPPORT,)))
    ids = reference_ids(p)
    assert len(ids) <= MAX_MESSAGE_IDS and ids[0] == "r63@corp.example" and OPENING_ID in ids


# -- DKIM ------------------------------------------------------------------------------


def test_a_participant_whose_aligned_signature_fails_is_a_stranger(
        make_intake: MakeIntake) -> None:
    intake = opened(make_intake("accept"))
    forged = SenderVerdict(dkim="fail", aligned=False, dmarc="fail", aligned_failed=True,
                           source="dkimpy")
    d = deliver(intake, reply("ana@customer.example", N), verdict=forged)
    assert d.ticket_number == N and not responder(intake).seen[-1].sender_is_participant
    with intake.factory() as s:
        event = ticket_events(s, N)[-2]
        assert event.kind == "stranger-follow-up"
        assert "DKIM signature for its domain failed" in event.detail["why"]
    # By proof as well: a Message-ID does not make a forged From genuine.
    raw = reply("ana@customer.example", N, body="x", extra=f"In-Reply-To: <{OPENING_ID}>\n")
    deliver(intake, raw, verdict=forged)
    assert not responder(intake).seen[-1].sender_is_participant


def test_an_aligned_pass_is_recorded_as_proof_of_identity(make_intake: MakeIntake) -> None:
    from gateway.intake.followup import find_follow_up

    intake = opened(make_intake())
    good = SenderVerdict(dkim="pass", aligned=True, dmarc="pass", source="dkimpy")
    p = dataclasses.replace(intake.prepare(reply("ana@customer.example", N),
                                           Envelope(None, (SUPPORT,))), verdict=good)
    with intake.engine.connect() as conn:
        found = find_follow_up(conn, intake.config.tickets, intake.participants, p)
    assert found is not None and found.sender is not None and found.sender.participant
    assert "identity proven by an aligned DKIM pass" in found.sender.why
