"""What a bounce returns, and the labels of a delivery status notification."""

from __future__ import annotations

import base64
import os

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
from tests.support import mail

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
