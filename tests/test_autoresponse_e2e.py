"""End to end: intake core + auto-responder + outbox delivery to a real aiosmtpd smarthost."""

from __future__ import annotations

import email.policy
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from autoresponse.outbox import Outbox
from gateway.config import Config
from gateway.intake.core import Intake
from gateway.intake.outcome import Outcome
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import Received, SmtpSink, answering_intake, build_mail
from tests.support import make_config
from ticketstore.models import Article, Event, OutboxMessage, Ticket

CUSTOMER = "ana@customer.example"
ENV = Envelope(CUSTOMER, ("support@helpdesk.example",))


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def ar_config(tmp_path: Path, db_url: str, sink: SmtpSink) -> Config:
    return make_config(tmp_path, db_url, outbound={"smarthost": sink.smarthost})


@pytest.fixture
def ar_store(ar_config: Config) -> Iterator[Store]:
    from ticketstore.db import upgrade

    s = open_store(ar_config, create=False)
    upgrade(s.engine)
    yield s
    s.dispose()


def deliver(config: Config, store: Store) -> None:
    Outbox(config, store.factory).run_until_idle()


def parsed(r: Received) -> Any:
    return message_from_bytes(r.data, policy=email.policy.default)


def test_new_ticket_gets_exactly_one_reply_with_its_number(
    ar_config: Config, ar_store: Store, sink: SmtpSink
) -> None:
    d = answering_intake(ar_config, ar_store).process(build_mail(), ENV)
    deliver(ar_config, ar_store)
    deliver(ar_config, ar_store)  # a second round must not send again
    assert len(sink.received) == 1
    got = sink.received[0]
    assert got.rcpt_tos == [CUSTOMER]
    assert got.mail_from == "support@helpdesk.example"
    msg = parsed(got)
    assert msg["Subject"] == f"[Ticket#{d.ticket_number}] Printer on fire"
    assert msg["In-Reply-To"] == "<m1@customer.example>"
    assert msg["References"] == "<m1@customer.example>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "bulk"
    assert msg["X-Ticketgate-Loop"]
    assert d.ticket_number in msg.get_body(("plain",)).get_content()
    with ar_store.factory() as s:
        out = s.execute(select(Article).where(Article.direction == "out")).scalar_one()
        assert f"<{out.message_id}>" == msg["Message-ID"]
        assert out.raw == got.data
        row = s.execute(select(OutboxMessage)).scalar_one()
        assert (row.state, row.attempts) == ("sent", 1)
        kinds = [e.kind for e in s.execute(select(Event).order_by(Event.id)).scalars()]
        assert "autoresponse-sent" in kinds


def test_reply_to_the_auto_response_threads_by_references(
    ar_config: Config, ar_store: Store, sink: SmtpSink
) -> None:
    intake = answering_intake(ar_config, ar_store)
    first = intake.process(build_mail(), ENV)
    deliver(ar_config, ar_store)
    ours = parsed(sink.received[0])["Message-ID"]
    # The client dropped the subject tag and In-Reply-To; only References is left.
    reply = build_mail(subject="Re: Printer on fire", message_id="m2@customer.example",
                       headers={"References": ours})
    second = intake.process(reply, ENV)
    assert second.outcome is Outcome.FOLLOW_UP
    assert second.ticket_number == first.ticket_number
    deliver(ar_config, ar_store)
    assert len(sink.received) == 1  # follow-ups are not acknowledged by default


def test_follow_up_ack_when_enabled(tmp_path: Path, db_url: str, sink: SmtpSink,
                                    ar_store: Store) -> None:
    config = make_config(tmp_path, db_url, outbound={"smarthost": sink.smarthost}, queues=[
        {"name": "Support", "addresses": ["support@helpdesk.example"], "follow_up_ack": True}])
    intake = answering_intake(config, ar_store)
    first = intake.process(build_mail(), ENV)
    intake.process(build_mail(subject=f"Re: [Ticket#{first.ticket_number}] Printer",
                              message_id="m2@customer.example"), ENV)
    deliver(config, ar_store)
    assert len(sink.received) == 2
    assert "added your message" in parsed(sink.received[1]).get_body(("plain",)).get_content()


def _close(store: Store, number: str) -> None:
    with store.factory() as s, s.begin():
        s.execute(select(Ticket).where(Ticket.number == number)).scalar_one().state = "closed"


def _dsn(returned_headers: str, *, as_headers_part: bool) -> bytes:
    ctype = "text/rfc822-headers" if as_headers_part else "message/rfc822"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\r\n"
        "To: support@helpdesk.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce-1@mx.customer.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BB"\r\n\r\n'
        "--BB\r\nContent-Type: text/plain\r\n\r\nmailbox unavailable\r\n"
        "--BB\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.example\r\n\r\n"
        f"Final-Recipient: rfc822; {CUSTOMER}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--BB\r\nContent-Type: {ctype}\r\n\r\n{returned_headers}\r\n"
        "--BB--\r\n"
    ).encode()


@pytest.mark.parametrize("as_headers_part", [False, True], ids=["rfc822", "rfc822-headers"])
def test_bounce_of_our_reply_attaches_to_the_ticket(
    ar_config: Config, ar_store: Store, sink: SmtpSink, as_headers_part: bool
) -> None:
    intake = answering_intake(ar_config, ar_store)
    first = intake.process(build_mail(), ENV)
    deliver(ar_config, ar_store)
    assert first.ticket_number
    _close(ar_store, first.ticket_number)
    ours = sink.received[0].data.decode().split("\r\n\r\n", 1)[0]
    d = intake.process(_dsn(ours, as_headers_part=as_headers_part),
                       Envelope("", ("support@helpdesk.example",)))
    assert d.outcome is Outcome.FOLLOW_UP
    assert d.ticket_number == first.ticket_number
    deliver(ar_config, ar_store)
    assert len(sink.received) == 1  # the bounce is never answered
    with ar_store.factory() as s:
        ticket = s.execute(select(Ticket).where(Ticket.number == d.ticket_number)).scalar_one()
        assert ticket.state == "closed"
        bounce = s.execute(select(Event).where(Event.kind == "bounce")).scalar_one()
        assert bounce.ticket_id == ticket.id
        assert CUSTOMER in bounce.detail["failed_recipients"]
        article = s.get(Article, d.article_id)
        assert article is not None and article.kind == "bounce"


def test_bounce_for_closed_ticket_in_new_ticket_queue_opens_nothing(
    ar_config: Config, ar_store: Store, sink: SmtpSink
) -> None:
    """Billing makes a new ticket for follow-ups to closed ones; a bounce must not."""
    env = Envelope(CUSTOMER, ("billing@helpdesk.example",))
    intake = answering_intake(ar_config, ar_store)
    first = intake.process(build_mail(to="billing@helpdesk.example"), env)
    deliver(ar_config, ar_store)
    assert first.ticket_number
    _close(ar_store, first.ticket_number)
    ours = sink.received[0].data.decode().split("\r\n\r\n", 1)[0]
    d = intake.process(_dsn(ours, as_headers_part=False),
                       Envelope("", ("billing@helpdesk.example",)))
    assert d.ticket_number == first.ticket_number
    with ar_store.factory() as s:
        assert len(s.execute(select(Ticket)).all()) == 1


def test_out_of_office_reply_threads_without_reopening_or_answer(
    ar_config: Config, ar_store: Store, sink: SmtpSink
) -> None:
    intake = answering_intake(ar_config, ar_store)
    first = intake.process(build_mail(), ENV)
    deliver(ar_config, ar_store)
    assert first.ticket_number
    _close(ar_store, first.ticket_number)
    ours = parsed(sink.received[0])["Message-ID"]
    ooo = build_mail(subject="Out of Office: [Ticket#x] Printer on fire",
                     message_id="ooo@customer.example",
                     headers={"In-Reply-To": ours, "Auto-Submitted": "auto-replied"})
    d = intake.process(ooo, ENV)
    assert d.ticket_number == first.ticket_number
    deliver(ar_config, ar_store)
    assert len(sink.received) == 1
    with ar_store.factory() as s:
        ticket = s.execute(select(Ticket).where(Ticket.number == d.ticket_number)).scalar_one()
        assert ticket.state == "closed"


def test_header_injection_cannot_add_headers_or_recipients(
    ar_config: Config, ar_store: Store, sink: SmtpSink
) -> None:
    evil_subject = "=?utf-8?q?Hi=0D=0ABcc:_victim@evil.example=0D=0AX-Evil:_1?="
    evil_name = "=?utf-8?b?QW5hDQpUbzogdmljdGltMkBldmlsLmV4YW1wbGU=?="  # Ana CRLF To: ...
    raw = build_mail(subject=evil_subject, sender=f"{evil_name} <{CUSTOMER}>")
    d = answering_intake(ar_config, ar_store).process(raw, ENV)
    deliver(ar_config, ar_store)
    [got] = sink.received
    assert got.rcpt_tos == [CUSTOMER]
    msg = parsed(got)
    for name in ("Bcc", "Cc", "X-Evil"):
        assert msg[name] is None, name
    assert msg.get_all("To") is not None and len(msg.get_all("To")) == 1
    assert [a.addr_spec for a in msg["To"].addresses] == [CUSTOMER]
    assert msg["Subject"].startswith(f"[Ticket#{d.ticket_number}] Hi")
    # The text stays on the one line (its host name broken, so it is no link).
    assert "\n" not in msg["Subject"] and "victim@evil[.]example" in msg["Subject"]


@pytest.mark.parametrize("evil_name", [
    "=?utf-8?q?Ana=0D=0ATo:_victim@evil.example?=",  # encoded CR/LF and an address
    "=?utf-8?q?victim@evil.example?=",                # a bare address in an encoded word
    "=?utf-8?q?Ana=2C_victim@evil.example?=",         # an encoded comma before it
])
def test_encoded_display_name_cannot_change_the_recipient(
    ar_config: Config, ar_store: Store, sink: SmtpSink, evil_name: str
) -> None:
    """The address comes from the angle brackets, never from inside an encoded word."""
    raw = build_mail(subject="Printer", sender=f"{evil_name} <{CUSTOMER}>")
    answering_intake(ar_config, ar_store).process(raw, ENV)
    deliver(ar_config, ar_store)
    [got] = sink.received
    assert got.rcpt_tos == [CUSTOMER]
    assert [a.addr_spec for a in parsed(got)["To"].addresses] == [CUSTOMER]


def test_any_language_in_utf8(tmp_path: Path, db_url: str, sink: SmtpSink,
                              ar_store: Store) -> None:
    config = make_config(tmp_path, db_url, outbound={"smarthost": sink.smarthost},
                         templates={"language": "es"})
    raw = build_mail(subject="=?utf-8?b?5omT5Y2w5py6552A54Gr5LqG?=",
                     sender="=?utf-8?q?Jos=C3=A9_N=C3=BA=C3=B1ez?= <jose@cliente.example>")
    d = answering_intake(config, ar_store).process(raw, Envelope("jose@cliente.example",
                                                            ENV.rcpt_tos))
    deliver(config, ar_store)
    msg = parsed(sink.received[0])
    assert msg["Subject"] == f"[Ticket#{d.ticket_number}] 打印机着火了"
    assert msg["To"].addresses[0].display_name == "José Núñez"
    body = msg.get_body(("plain",)).get_content()
    assert body.startswith("Hola José Núñez:")
    assert "incidencia" in body
    assert msg.get_body(("plain",)).get_content_charset() == "utf-8"


def _relay(src: SmtpSink, dst: Intake, strip: bool) -> int:
    """Hand what `src` received to the other instance, like the MTAs between them would."""
    batch = list(src.received)
    src.received.clear()
    for r in batch:
        data = r.data
        if strip:  # a broken forwarder that drops every automation header
            head, _, body = data.partition(b"\r\n\r\n")
            keep = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(
                (b"auto-submitted", b"precedence", b"x-auto-response-suppress",
                 b"x-ticketgate-loop"))]
            data = b"\r\n".join(keep) + b"\r\n\r\n" + body
        dst.process(data, Envelope(r.mail_from, tuple(r.rcpt_tos)))
    return len(batch)


@pytest.mark.parametrize("strip", [False, True], ids=["headers-kept", "headers-stripped"])
def test_two_instances_answering_each_other_stop(tmp_path: Path, sqlite_url: str,
                                                 strip: bool) -> None:
    max_per_day = 3
    with SmtpSink() as sink_a, SmtpSink() as sink_b:
        instances = []
        for name, sink, addr, sysid in (("a", sink_a, "support@a.example", "11"),
                                        ("b", sink_b, "help@b.example", "22")):
            base = tmp_path / name
            base.mkdir()
            cfg = make_config(base, f"sqlite:///{base / 'tg.db'}",
                              outbound={"smarthost": sink.smarthost},
                              tickets={"system_id": sysid},
                              autoresponse={"max_per_day": max_per_day},
                              queues=[{"name": "Support", "addresses": [addr],
                                       "follow_up_ack": True}])
            store = open_store(cfg)
            instances.append((cfg, store, answering_intake(cfg, store)))
        (cfg_a, store_a, intake_a), (cfg_b, store_b, intake_b) = instances
        # Someone at B writes to A by hand; A answers B, B answers A, ...
        intake_a.process(build_mail(sender="help@b.example", to="support@a.example"),
                         Envelope("help@b.example", ("support@a.example",)))
        total = 0
        for _ in range(50):
            deliver(cfg_a, store_a)
            deliver(cfg_b, store_b)
            moved = _relay(sink_a, intake_b, strip) + _relay(sink_b, intake_a, strip)
            total += moved
            if moved == 0:
                break
        else:
            pytest.fail("the two instances never stopped answering each other")
        store_a.dispose()
        store_b.dispose()
    if strip:
        assert 2 <= total <= 2 * max_per_day
    else:
        assert total == 1


def test_agent_notification_to_queue_notify_addresses(tmp_path: Path, db_url: str,
                                                      sink: SmtpSink, ar_store: Store) -> None:
    config = make_config(tmp_path, db_url, outbound={"smarthost": sink.smarthost},
                         autoresponse={"max_per_day": 1}, queues=[
        {"name": "Support", "addresses": ["support@helpdesk.example"],
         "notify": ["agents@helpdesk.example", "lead@helpdesk.example"]}])
    intake = answering_intake(config, ar_store)
    first = intake.process(build_mail(), ENV)
    intake.process(build_mail(subject=f"Re: [Ticket#{first.ticket_number}] Printer",
                              message_id="m2@customer.example"), ENV)
    deliver(config, ar_store)
    by_rcpt: dict[str, list[Any]] = {}
    for r in sink.received:
        by_rcpt.setdefault(r.rcpt_tos[0], []).append(parsed(r))
    assert len(by_rcpt[CUSTOMER]) == 1
    agents = by_rcpt["agents@helpdesk.example"]
    assert len(agents) == 2 and len(by_rcpt["lead@helpdesk.example"]) == 2
    assert all(m["Auto-Submitted"] == "auto-generated" for m in agents)
    assert agents[0]["Subject"] == f"[Ticket#{first.ticket_number}] Printer on fire"
    body = agents[0].get_body(("plain",)).get_content()
    assert first.ticket_number in body and "> the printer is on fire." in body
    # The agent answers the notification: it threads onto the ticket by References.
    reply = build_mail(sender="agents@helpdesk.example", subject="Re: notification",
                       message_id="agent-1@helpdesk.example",
                       headers={"References": agents[0]["Message-ID"]})
    d = intake.process(reply, Envelope("agent@else.example", ENV.rcpt_tos))
    assert d.ticket_number == first.ticket_number


def test_reject_and_new_ticket_rejected(tmp_path: Path, db_url: str, sink: SmtpSink,
                                        ar_store: Store) -> None:
    config = make_config(tmp_path, db_url, outbound={"smarthost": sink.smarthost}, queues=[
        {"name": "Sales", "addresses": ["sales@helpdesk.example"], "follow_up_closed": "reject"},
        {"name": "Old", "addresses": ["old@helpdesk.example"], "accept_new": False}])
    intake = answering_intake(config, ar_store)
    sales = Envelope(CUSTOMER, ("sales@helpdesk.example",))
    first = intake.process(build_mail(to="sales@helpdesk.example"), sales)
    assert first.ticket_number
    _close(ar_store, first.ticket_number)
    again = intake.process(build_mail(to="sales@helpdesk.example", message_id="m2@c.example",
                                      subject=f"Re: [Ticket#{first.ticket_number}] more"),
                           sales)
    assert again.outcome is Outcome.REJECTED
    intake.process(build_mail(to="old@helpdesk.example", message_id="m3@c.example"),
                   Envelope(CUSTOMER, ("old@helpdesk.example",)))
    deliver(config, ar_store)
    bodies = [(r.mail_from, parsed(r).get_body(("plain",)).get_content())
              for r in sink.received]
    assert len(bodies) == 3
    assert "is closed" in bodies[1][1] and bodies[1][0] == "sales@helpdesk.example"
    assert "no longer takes new requests" in bodies[2][1]
    assert bodies[2][0] == "old@helpdesk.example"
    with ar_store.factory() as s:
        kinds = sorted(r.kind for r in s.execute(select(OutboxMessage)).scalars())
    assert kinds == ["auto-reply", "new-ticket-rejected", "reject"]


def test_queue_without_address_uses_configured_from(tmp_path: Path, db_url: str,
                                                    sink: SmtpSink, ar_store: Store) -> None:
    config = make_config(tmp_path, db_url, outbound={"smarthost": sink.smarthost},
                         autoresponse={"from_address": "helpdesk@helpdesk.example"})
    intake = answering_intake(config, ar_store)
    d = intake.process(build_mail(to="unknown@helpdesk.example"),
                       Envelope(CUSTOMER, ("unknown@helpdesk.example",)))
    assert d.queue == "Postmaster"
    deliver(config, ar_store)
    [got] = sink.received
    assert got.mail_from == "helpdesk@helpdesk.example"
    assert parsed(got)["From"].addresses[0].addr_spec == "helpdesk@helpdesk.example"


def test_through_the_daemon_reply_arrives_in_seconds(tmp_path: Path, sqlite_url: str,
                                                     sink: SmtpSink) -> None:
    """As a user sees it: LMTP in, the daemon's own outbox worker sends the reply."""
    import time

    from tests.server_helpers import RunningDaemon, daemon_config

    config = daemon_config(tmp_path, sqlite_url, outbound={"smarthost": sink.smarthost})
    daemon = RunningDaemon(config, services=["autoresponse.worker:run"]).start()
    try:
        client = daemon.lmtp()
        client.sendmail(CUSTOMER, ["support@helpdesk.example"], build_mail())
        client.quit()
        deadline = time.monotonic() + 15
        while not sink.received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.stop()
    [got] = sink.received
    assert got.rcpt_tos == [CUSTOMER]
    assert "[Ticket#" in parsed(got)["Subject"]
