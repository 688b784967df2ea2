"""The composed message: headers we promise, and no injection from customer values."""

from __future__ import annotations

import email.policy
from email import message_from_bytes

import pytest

from autoresponse.compose import (
    MAX_LINE,
    Outgoing,
    clean_header_value,
    compose,
    new_message_id,
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


def test_a_loop_value_or_sender_name_with_line_breaks_adds_no_header() -> None:
    evil = "Eve\r\nBcc: victim@evil.example"
    raw = compose(_out(from_name=evil, loop_value=evil))
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")
             if line and line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and names.count(b"to") == 1


@pytest.mark.parametrize("bad", ["a@b\r\nBcc: v@evil.example", "ñandú@customer.example"])
def test_sender_and_recipient_must_be_plain_ascii_mailboxes(bad: str) -> None:
    with pytest.raises(ValueError):
        compose(_out(from_address=bad))
    with pytest.raises(ValueError):
        compose(_out(to_address=bad))


def test_names_and_subject_in_any_language() -> None:
    raw = compose(_out(to_name="Иван Петров", subject="[Ticket#1] 打印机着火了 " * 8,
                       from_name='O\'Brien, "Support"'))
    assert raw.isascii()
    msg = message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"].addresses[0].display_name == "Иван Петров"
    assert msg["From"].addresses[0].display_name == 'O\'Brien, "Support"'
    assert msg["Subject"] == ("[Ticket#1] 打印机着火了 " * 8).strip()


def test_a_long_message_id_is_repeated_as_it_is() -> None:
    """Folding must not RFC 2047-encode an id too long for a line: the reply would not
    thread (Exchange's ids are 80 characters and more)."""
    long_id = "AM0PR01MB" + "7" * 60 + "@AM0PR01MB1234.eurprd01.prod.exchangelabs.com"
    raw = compose(_out(in_reply_to=long_id, references=("c0@customer.example",)))
    assert b"=?" not in raw and f"<{long_id}>".encode() in raw
    msg = message_from_bytes(raw, policy=email.policy.default)
    assert msg["In-Reply-To"].strip() == f"<{long_id}>"
    assert msg["References"] == f"<c0@customer.example> <{long_id}>"


def test_references_keep_the_last_ones() -> None:
    refs = tuple(f"r{i}@customer.example" for i in range(30))
    msg = _parse(_out(references=refs, in_reply_to="r29@customer.example"))
    assert msg["References"].split() == [f"<{r}>" for r in refs[-20:]]


def _parts(raw: bytes) -> list[email.message.EmailMessage]:
    msg = message_from_bytes(raw, policy=email.policy.default)
    return [p for p in msg.walk() if not p.is_multipart()]  # type: ignore[misc]


def _content(part: email.message.EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


@pytest.mark.parametrize(("text", "cte"), [
    ("Hi\n\tthere\n", "7bit"),
    ("x" * 76 + "\n" + "y" * 76, "7bit"),  # at the limit
    (".\nlone dot\n", "7bit"),
    ("x" * 77, "quoted-printable"),  # one over
    ("a\n" + "b" * 77 + "\n", "quoted-printable"),
    ("Grüße\n", "quoted-printable"),
    ("ctrl \x01 char\n", "quoted-printable"),
])
def test_a_part_is_7bit_only_for_short_printable_ascii_lines(text: str, cte: str) -> None:
    for html in (None, "<pre>\n" + text + "\n</pre>"):
        raw = compose(_out(text=text, html=html))
        parts = _parts(raw)
        assert [p["Content-Transfer-Encoding"] for p in parts] == [cte] * len(parts)
        assert _content(parts[0]) == text.rstrip("\n") + "\n"
        assert max(len(line) for line in raw.split(b"\r\n")) <= MAX_LINE


def test_every_line_ends_in_crlf_and_stays_under_the_limits() -> None:
    text = ("Grüße " * 40 + "\n") * 3 + "=" * 100 + "\n  \n"
    raw = compose(_out(subject="[Ticket#1] " + "word " * 200 + "x" * 1200,
                       to_name="Ana " * 100, text=text, html="<p>" + "x" * 300 + "</p>"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert max(len(line) for line in body.split(b"\r\n")) <= MAX_LINE
    assert _content(_parts(raw)[0]) == text


def test_message_ids_differ() -> None:
    ids = {new_message_id("helpdesk.example") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.endswith("@helpdesk.example") and "<" not in i for i in ids)
