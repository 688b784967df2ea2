"""What a bounce returns, and the labels of a delivery status notification."""

from __future__ import annotations

import base64
import os
import re

import pytest

from gateway.mail.classify import (
    AUTO_SUBMITTED,
    BOUNCE,
    NULL_SENDER,
    bounced_message_ids,
    bounced_recipients,
    classify,
)
from gateway.mail.envelope import Envelope
from gateway.mail.parse import parse_message
from tests.support import FIXTURES, mail

_DSN_HEAD = (b"From: MAILER-DAEMON@mx.customer.example\nSubject: Undelivered Mail\n"
             b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\n\n"
             b"--r\nContent-Type: text/plain\n\nYour message could not be delivered.\n"
             b"--r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
             b"Final-Recipient: rfc822; gone@customer.example\nAction: failed\n"
             b"Status: 5.1.1\n\n")
_RETURNED = (b"Message-ID: <answer-1@helpdesk.example>\nIn-Reply-To: <q-1@customer.example>\n"
             b"References: <q-0@customer.example>\n <q-1@customer.example>\n")


def test_returned_message_ids_from_a_returned_message() -> None:
    big = base64.encodebytes(os.urandom(200_000))
    raw = (_DSN_HEAD + b"--r\nContent-Type: message/rfc822\n\n" + _RETURNED
           + b"Content-Type: multipart/mixed; boundary=i\n\n--i\nContent-Type: text/plain\n\n"
           b"the answer\n--i\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64"
           b"\n\n" + big + b"--i--\n--r--\n")
    assert bounced_message_ids(raw) == (
        "answer-1@helpdesk.example", "q-1@customer.example", "q-0@customer.example")


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_returned_message_ids_from_returned_headers(nl: bytes) -> None:
    raw = (_DSN_HEAD + b"--r\nContent-Type: text/rfc822-headers\n\n" + _RETURNED
           + b"Subject: not an id <x@y>\n\nMessage-ID: <in-the-body@x>\n--r--\n")
    assert bounced_message_ids(raw.replace(b"\n", nl)) == (
        "answer-1@helpdesk.example", "q-1@customer.example", "q-0@customer.example")


def test_a_bounce_without_the_returned_message_names_none() -> None:
    assert bounced_message_ids(mail("bounce_dsn.eml")) == ()
    assert bounced_message_ids(b"Subject: plain mail\n\nhello\n") == ()


def test_delivery_status_notification_is_a_bounce() -> None:
    raw = mail("bounce_dsn.eml")
    assert bounced_recipients(raw) == frozenset({"nobody@customer.example"})
    labels = classify(parse_message(raw), Envelope("", ("support@helpdesk.example",)))
    assert {BOUNCE, NULL_SENDER, AUTO_SUBMITTED} <= labels.labels
    assert "bounce: multipart/report" in labels.reasons


# -- real bounces reaching us through a forwarder (tests/fixtures/bounces, flufl.bounce's) --

BOUNCES = sorted(p.name for p in (FIXTURES / "bounces").glob("*.eml")
                 if not p.name.startswith("autoreply_"))
FORWARDER = Envelope("fwd-bounces@forwarder.example", ("support@helpdesk.example",))
# What a mailing list added on the way: removed, so the bounce detection must stand alone.
_LIST_HEADERS = re.compile(rb"^(?:list-[\w-]+|precedence|x-beenthere|errors-to):.*\n"
                           rb"(?:[ \t].*\n)*", re.IGNORECASE | re.MULTILINE)


def bounce_fixture(name: str, strip_list: bool = False) -> bytes:
    raw = (FIXTURES / "bounces" / name).read_bytes().replace(b"\r\n", b"\n")
    if strip_list:
        head, sep, body = raw.partition(b"\n\n")
        raw = _LIST_HEADERS.sub(b"", head + b"\n").rstrip(b"\n") + sep + body
    return raw


def test_the_corpus_holds_the_kinds_the_issue_names() -> None:
    assert {"exim_01.eml", "simple_43.eml", "simple_15.eml", "dumbass_01.eml",
            "qmail_01.eml", "postfix_01.eml"} <= set(BOUNCES)
    assert len(BOUNCES) >= 15


@pytest.mark.parametrize("strip_list", [False, True], ids=["as-received", "list-headers-removed"])
@pytest.mark.parametrize("name", BOUNCES)
def test_real_bounce_through_a_forwarder_is_a_bounce(name: str, strip_list: bool) -> None:
    raw = bounce_fixture(name, strip_list)
    if strip_list:
        assert not re.search(rb"^(list-id|precedence):", raw.partition(b"\n\n")[0],
                             re.IGNORECASE | re.MULTILINE)
    result = classify(parse_message(raw), FORWARDER)
    assert BOUNCE in result.labels, (name, result.reasons)
    assert NULL_SENDER not in result.labels  # the envelope sender is the forwarder's


def test_interscan_and_exim_multipart_without_addresses_are_bounces() -> None:
    """flufl.bounce finds no address in these two: the returned message decides."""
    for name in ("dumbass_01.eml", "simple_43.eml"):
        raw = bounce_fixture(name)
        assert bounced_recipients(raw) == frozenset()
        reasons = classify(parse_message(raw), FORWARDER).reasons
        assert "bounce: bounce subject with the returned message attached" in reasons


def test_interscan_found_by_flufl_bounce_once_its_subject_makes_it_a_suspect() -> None:
    raw = bounce_fixture("simple_15.eml")
    assert bounced_recipients(raw) == frozenset({"userx@example.be"})
    assert "bounce: bounce for 1 recipient(s) (flufl.bounce)" in classify(
        parse_message(raw), FORWARDER).reasons


def test_auto_reply_marked_only_with_precedence_auto_reply() -> None:
    raw = (FIXTURES / "bounces" / "autoreply_qmail_08.eml").read_bytes()
    result = classify(parse_message(raw), FORWARDER)
    assert AUTO_SUBMITTED in result.labels
    assert "auto-submitted: Precedence: auto_reply" in result.reasons


@pytest.mark.parametrize(("return_path", "auto"), [
    ("<MAILER-DAEMON@mx.customer.example>", True),
    ("<postmaster@mx.customer.example>", True),
    ("<>", True),
    ("<ana@customer.example>", False),
])
def test_daemon_return_path_is_auto_generated(return_path: str, auto: bool) -> None:
    raw = (f"Return-Path: {return_path}\nFrom: Ana <ana@customer.example>\n"
           f"Subject: hello\n\nhi\n").encode()
    result = classify(parse_message(raw), FORWARDER)
    assert (AUTO_SUBMITTED in result.labels) is auto, result.reasons


def test_a_customer_asking_about_a_bounce_is_not_one() -> None:
    """A reply or forward with a bounce attached is a person writing, not a bounce."""
    raw = bounce_fixture("simple_43.eml")
    head, _, body = raw.partition(b"\n\n")
    head = re.sub(rb"^From: .*$", b"From: Ana <ana@customer.example>", head, flags=re.M)
    head = re.sub(rb"^Return-Path: .*$", b"Return-Path: <ana@customer.example>", head,
                  flags=re.M)
    head = re.sub(rb"^Subject: ", b"Subject: Fwd: ", head, flags=re.M)
    result = classify(parse_message(head + b"\n\n" + body),
                      Envelope("ana@customer.example", FORWARDER.rcpt_tos))
    assert BOUNCE not in result.labels and AUTO_SUBMITTED not in result.labels, result.reasons
