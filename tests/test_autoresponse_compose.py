"""The composed message: headers we promise, and no injection from customer values."""

from __future__ import annotations

import email.policy
from email import message_from_bytes

import pytest

from autoresponse.compose import (
    Outgoing,
    clean_header_value,
    compose,
    compose_unchanged,
    valid_address,
)


def _out(**kw: object) -> Outgoing:
    base: dict[str, object] = dict(
        from_name="Support", from_address="support@helpdesk.example", to_name="Ana",
        to_address="ana@customer.example", subject="[Ticket#1] Hello", text="Hi\n",
        html=None, message_id="x1@helpdesk.example", in_reply_to="c1@customer.example",
        references=("c0@customer.example",),
    )
    base.update(kw)
    return Outgoing(**base)  # type: ignore[arg-type]


def _parse(out: Outgoing) -> email.message.EmailMessage:
    return message_from_bytes(compose(out), policy=email.policy.default)  # type: ignore[return-value]


@pytest.mark.parametrize("evil", [
    "Hi\r\nBcc: victim@evil.example",
    "Hi\nBcc: victim@evil.example",
    "Hi\rBcc: victim@evil.example",
    "Hi\u2028Bcc: victim@evil.example",
    "Hi\x00\x0bBcc: victim@evil.example",
])
def test_crlf_in_subject_and_name_adds_no_header(evil: str) -> None:
    msg = _parse(_out(subject=evil, to_name=evil, from_name=evil))
    assert msg["Bcc"] is None
    assert [a.addr_spec for a in msg["To"].addresses] == ["ana@customer.example"]
    assert "victim@evil.example" in msg["Subject"]
    raw = compose(_out(subject=evil, to_name=evil))
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc:") for line in head.split(b"\r\n"))


@pytest.mark.parametrize("bad", [
    "ana@customer.example\r\nBcc: victim@evil.example",
    "ana@customer.example\n",  # `$` alone would accept it: a bare LF ending the headers
    "ana@customer.example, victim@evil.example",
    "Ana <ana@customer.example>",
    "victim@evil.example;ana@customer.example",
    "",
    "no-at-sign",
])
def test_recipient_must_be_one_plain_mailbox(bad: str) -> None:
    assert not valid_address(bad)
    with pytest.raises(ValueError):
        compose(_out(to_address=bad))


def test_headers_we_promise() -> None:
    msg = _parse(_out(html="<p>Hi</p>"))
    assert msg["Message-ID"] == "<x1@helpdesk.example>"
    assert msg["In-Reply-To"] == "<c1@customer.example>"
    assert msg["References"] == "<c0@customer.example> <c1@customer.example>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "bulk"
    assert msg["X-Ticketgate-Loop"] == "support@helpdesk.example"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("html",)).get_content().strip() == "<p>Hi</p>"


def test_bad_message_ids_are_dropped() -> None:
    msg = _parse(_out(in_reply_to="a b@c", references=("ok@x", "<bad>@x")))
    assert msg["In-Reply-To"] is None
    assert msg["References"] == "<ok@x>"


def test_clean_header_value() -> None:
    assert clean_header_value("a\r\n b\tc\x7f") == "a b c"
    assert len(clean_header_value("x" * 5000)) == 500


UNCHANGED = [
    ({}, True),
    ({"html": "<p>Hi</p>\n"}, True),
    ({"subject": "[Ticket#1] Grüße"}, False),  # RFC 2047
    ({"subject": "[Ticket#1]  two  spaces"}, False),  # cleaned
    ({"text": "x" * 77 + "\n"}, False),  # quoted-printable: a soft break
    ({"text": "Grüße\n"}, False),
    ({"html": "<p>" + "x" * 80 + "</p>\n"}, False),
    ({"html": "<p>Grüße</p>\n"}, False),
]


@pytest.mark.parametrize(("change", "unchanged"), UNCHANGED)
def test_compose_says_when_subject_and_parts_went_in_unchanged(
    change: dict[str, str], unchanged: bool,
) -> None:
    """What a draft relies on to skip counting its placeholders (draft.py): said True
    only when the subject and each part's every line are in the bytes as they are."""
    out = _out(**change)
    data, said = compose_unchanged(out)
    assert said is unchanged
    if said:
        lines = [out.subject, *out.text.splitlines(), *(out.html or "").splitlines()]
        for line in lines:
            assert line.encode("ascii") in data
