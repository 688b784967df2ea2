"""Every suppression case: no auto-response, and an event saying which check and why.

Each case is stored through the real intake core with the real auto-responder on a real
database (SQLite and PostgreSQL); a plain customer message is the control that must be
answered, so a responder that never answers fails here too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoresponse.autoresponder import AutoResponder
from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.intake.ports import Route
from gateway.mail.classify import Classification
from gateway.mail.envelope import Envelope
from gateway.mail.parse import ParsedMessage
from gateway.runtime import Store
from tests.autoresponse_helpers import (
    build_mail,
    outbox_rows,
    suppressed_events,
)
from tests.support import make_config

CUSTOMER = "ana@customer.example"
ENV = Envelope(CUSTOMER, ("support@helpdesk.example",))

DSN = (
    b"From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\r\n"
    b"To: support@helpdesk.example\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"Message-ID: <dsn1@mx.customer.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
    b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nI could not deliver your mail.\r\n"
    b"--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; mx.customer.example\r\n\r\n"
    b"Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    b"\r\n--b1--\r\n"
)

# A qmail-style bounce: no multipart/report, only flufl.bounce recognises it.
QMAIL_BOUNCE = (
    b"From: MAILER-DAEMON@mail.customer.example\r\n"
    b"To: support@helpdesk.example\r\n"
    b"Subject: failure notice\r\n"
    b"Message-ID: <qb1@mail.customer.example>\r\n"
    b"\r\n"
    b"Hi. This is the qmail-send program at mail.customer.example.\r\n"
    b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n"
    b"\r\n"
    b"<gone@customer.example>:\r\n"
    b"Sorry, no mailbox here by that name. (#5.1.1)\r\n"
    b"\r\n"
    b"--- Below this line is a copy of the message.\r\n"
    b"\r\n"
    b"Subject: hello\r\n"
)

# (case id, raw message, envelope, the check that must say no)
CASES: list[tuple[str, bytes, Envelope, str]] = [
    ("auto-submitted", build_mail(headers={"Auto-Submitted": "auto-generated"}), ENV,
     "auto-submitted"),
    ("precedence-bulk", build_mail(headers={"Precedence": "bulk"}), ENV, "precedence"),
    ("precedence-junk", build_mail(headers={"Precedence": "junk"}), ENV, "precedence"),
    ("precedence-list", build_mail(headers={"Precedence": "list"}), ENV, "precedence"),
    ("list-id", build_mail(headers={"List-Id": "<users.lists.example>"}), ENV, "list"),
    ("list-unsubscribe", build_mail(headers={"List-Unsubscribe": "<mailto:u@lists.example>"}),
     ENV, "list"),
    ("x-loop", build_mail(headers={"X-Loop": "helpdesk@other.example"}), ENV, "loop"),
    # Our own X-Ticketgate-Loop counts only with a valid mark: tests/test_loop_mark.py.
    ("x-auto-response-suppress", build_mail(headers={"X-Auto-Response-Suppress": "All"}), ENV,
     "suppress-requested"),
    ("null-sender", build_mail(), Envelope("", ENV.rcpt_tos), "null-sender"),
    ("noreply", build_mail(sender="Shop <no-reply@shop.example>"),
     Envelope("no-reply@shop.example", ENV.rcpt_tos), "noreply-sender"),
    ("donotreply", build_mail(sender="Shop <DoNotReply@shop.example>"),
     Envelope("bounces+123@shop.example", ENV.rcpt_tos), "noreply-sender"),
    ("mailer-daemon", build_mail(sender="MAILER-DAEMON@mx.example"),
     Envelope("postmaster@mx.example", ENV.rcpt_tos), "noreply-sender"),
    ("dsn", DSN, Envelope("", ENV.rcpt_tos), "null-sender"),
    ("dsn-with-sender", DSN, Envelope("bounce-handler@mx.customer.example", ENV.rcpt_tos),
     "bounce"),
    ("qmail-bounce", QMAIL_BOUNCE, Envelope("qmail@mail.customer.example", ENV.rcpt_tos),
     "bounce"),
    ("ooo-exchange", build_mail(subject="Automatic reply: Printer on fire",
                                headers={"Thread-Topic": "Printer on fire",
                                         "X-Auto-Response-Suppress": "All"}), ENV,
     "suppress-requested"),
    ("ooo-gmail", build_mail(subject="Away until Monday",
                             headers={"In-Reply-To": "<x@helpdesk.example>",
                                      "Auto-Submitted": "auto-replied"}), ENV,
     "auto-submitted"),
    ("ooo-zimbra", build_mail(subject="Vacation",
                              headers={"Auto-Submitted": "auto-replied (zimbra; vacation)"}),
     ENV, "auto-submitted"),
    ("ooo-vacation-program", build_mail(subject="away from my mail",
                                        headers={"X-Mailer": "vacation 1.2"}), ENV,
     "out-of-office"),
    ("ooo-x-autoreply", build_mail(subject="Re: Printer", headers={"X-Autoreply": "yes"}), ENV,
     "out-of-office"),
    ("system-address", build_mail(sender="Billing <billing@helpdesk.example>"),
     Envelope("billing@helpdesk.example", ENV.rcpt_tos), "system-address"),
    ("system-address-plus", build_mail(sender="support+x@helpdesk.example"),
     Envelope("other@else.example", ENV.rcpt_tos), "system-address"),
]


def _intake(config: Config, store: Store, router: object | None = None) -> Intake:
    intake = Intake(config, store.factory, router=router,  # type: ignore[arg-type]
                    responder=AutoResponder(config))
    intake.sync_queues()
    return intake




def test_plain_customer_mail_is_answered(config: Config, store: Store) -> None:
    d = _intake(config, store).process(build_mail(), ENV)
    assert d.outcome is Outcome.CREATED
    rows = outbox_rows(store)
    assert [(r.kind, r.rcpt_to) for r in rows] == [("auto-reply", CUSTOMER)]
    assert suppressed_events(store) == []


@pytest.mark.parametrize(("raw", "envelope", "check"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def testsuppressed_events(config: Config, store: Store, raw: bytes, envelope: Envelope,
                    check: str) -> None:
    d = _intake(config, store).process(raw, envelope)
    assert d.ticket_number
    assert outbox_rows(store) == []
    events = suppressed_events(store)
    assert len(events) == 1, events
    assert events[0]["check"] == check, events
    assert events[0]["reason"]


def test_out_of_office_conventions_are_labelled() -> None:
    """Each vacation convention is classified out-of-office, not merely auto-submitted."""
    from gateway.mail.classify import OUT_OF_OFFICE, classify
    from gateway.mail.parse import parse_message

    for case_id in ("ooo-exchange", "ooo-gmail", "ooo-zimbra", "ooo-vacation-program",
                    "ooo-x-autoreply"):
        raw, env = next((c[1], c[2]) for c in CASES if c[0] == case_id)
        assert OUT_OF_OFFICE in classify(parse_message(raw), env).labels, case_id


class _NoAutoResponse:
    def route(self, msg: ParsedMessage, envelope: Envelope,
              classification: Classification, verdict: object = None) -> Route:
        return Route(no_auto_response=True, matched=("vip-silence",))


def test_rule_no_auto_response(config: Config, store: Store) -> None:
    _intake(config, store, router=_NoAutoResponse()).process(build_mail(), ENV)
    assert outbox_rows(store) == []
    [event] = suppressed_events(store)
    assert event["check"] == "rule" and "vip-silence" in str(event["reason"])


def test_queue_without_auto_response(tmp_path: Path, db_url: str, store: Store) -> None:
    config = make_config(tmp_path, db_url, queues=[
        {"name": "Support", "addresses": ["support@helpdesk.example"], "auto_response": False}])
    _intake(config, store).process(build_mail(), ENV)
    assert outbox_rows(store) == []
    assert [e["check"] for e in suppressed_events(store)] == ["queue-off"]


def test_reply_to_of_ours_is_not_honoured(config: Config, store: Store) -> None:
    raw = build_mail(headers={"Reply-To": "sales@helpdesk.example"})
    _intake(config, store).process(raw, ENV)
    assert [r.rcpt_to for r in outbox_rows(store)] == [CUSTOMER]


def test_reply_to_is_honoured(config: Config, store: Store) -> None:
    raw = build_mail(headers={"Reply-To": "Team <team@customer.example>"})
    _intake(config, store).process(raw, ENV)
    assert [r.rcpt_to for r in outbox_rows(store)] == ["team@customer.example"]


def test_daily_limit_survives_restart(tmp_path: Path, db_url: str, store: Store) -> None:
    """The counter is in the database: a new Intake (a restart, another process) sees it.
    (The UTC day and the other limits: tests/test_autoresponse_limits.py.)"""
    config = make_config(tmp_path, db_url, autoresponse={"max_per_day": 3})
    for i in range(2):
        _intake(config, store).process(build_mail(subject=f"q{i}", message_id=f"d{i}@c"), ENV)
    restarted = _intake(dataclasses.replace(config), store)
    for i in range(2, 5):
        restarted.process(build_mail(subject=f"q{i}", message_id=f"d{i}@c"), ENV)
    assert len(outbox_rows(store)) == 3
    checks = [e["check"] for e in suppressed_events(store)]
    assert checks == ["daily-limit", "daily-limit"]


def test_disabled_sends_nothing(tmp_path: Path, db_url: str, store: Store) -> None:
    config = make_config(tmp_path, db_url, autoresponse={"enabled": False})
    _intake(config, store).process(build_mail(), ENV)
    assert outbox_rows(store) == []


def test_a_broken_template_is_recorded_and_the_mail_still_stored(
    tmp_path: Path, db_url: str, store: Store,
) -> None:
    """A template that fails at run time must not make the MTA retry the mail."""
    broken = tmp_path / "templates" / "default" / "en" / "new-ticket.txt"
    broken.parent.mkdir(parents=True)
    broken.write_text("Hello\n{{ ticket.numbr }}\n", encoding="utf-8")
    config = make_config(tmp_path, db_url, templates={"dir": str(tmp_path / "templates")})
    d = _intake(config, store).process(build_mail(), ENV)
    assert d.outcome is Outcome.CREATED and d.ticket_number
    assert outbox_rows(store) == []
    [event] = suppressed_events(store)
    assert event["check"] == "template-error"
    assert "new-ticket.txt:2:" in str(event["reason"]) and "numbr" in str(event["reason"])


_BOUNCE_DIR = Path(__file__).parent / "fixtures" / "bounces"
FORWARDED = Envelope("fwd-bounces@forwarder.example", ENV.rcpt_tos)


@pytest.mark.parametrize("name", sorted(p.name for p in _BOUNCE_DIR.glob("*.eml")))
def test_real_bounces_and_auto_replies_through_a_forwarder_get_no_answer(
        config: Config, store: Store, name: str) -> None:
    """Real mail from flufl.bounce's test data, re-sent by a forwarder (sender not <>)."""
    _intake(config, store).process((_BOUNCE_DIR / name).read_bytes(), FORWARDED)
    assert outbox_rows(store) == []
    [event] = suppressed_events(store)
    assert event["check"] in {"auto-submitted", "precedence", "list", "bounce"}, event
