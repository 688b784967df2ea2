"""parse_message's shortcuts for ordinary mail give exactly what the general path gives.

Each shortcut (the one-part tree without the feed parser, simple address lists without
getaddresses, Content-Type parameters without get_param) is compared with the general
code on the fixture corpus and on generated messages, including the malformed shapes
the shortcuts must leave to the general path.
"""

from __future__ import annotations

import dataclasses
import email
import email.message
import email.utils
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mail import parse
from gateway.mail.parse import ParsedMessage, parse_message

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "mail").glob("*.eml"))


def _state(msg: email.message.Message) -> dict[str, Any]:
    """Everything a compat32 Message holds (defects by type: they compare by identity)."""
    out = dict(vars(msg))
    out["defects"] = [type(d).__name__ for d in msg.defects]
    out["policy"] = repr(msg.policy)
    return out


def _general(raw: bytes, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> ParsedMessage:
    """parse_message with every shortcut off."""
    with monkeypatch.context() as m:
        m.setattr(parse, "_simple_tree", lambda _raw: None)
        m.setattr(parse, "_simple_addresses", lambda _value: None)
        m.setattr(parse, "_simple_content_type", lambda _part: None)
        return parse_message(raw, **kw)


def _check(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Compare both ways; True if the one-part shortcut took the message."""
    fast_tree = parse._simple_tree(raw)
    if fast_tree is not None:
        assert _state(fast_tree) == _state(email.message_from_bytes(raw))
    assert parse_message(raw) == _general(raw, monkeypatch)
    return fast_tree is not None


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixtures_parse_the_same_with_and_without_shortcuts(
    path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = path.read_bytes()
    _check(raw, monkeypatch)
    _check(raw.replace(b"\r\n", b"\n"), monkeypatch)
    _check(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), monkeypatch)


def test_ordinary_messages_take_the_shortcuts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcuts are for the common case: they must actually apply to it."""
    from bench.bench_lmtp import follow_up, new_message

    rnd = random.Random(5)
    for raw in (new_message(1, rnd), follow_up(2, rnd)):
        assert _check(raw, monkeypatch)
        tree = parse._simple_tree(raw)
        assert tree is not None
        assert parse._simple_addresses(tree["From"]) is not None
        assert parse._simple_content_type(tree) == ("text/plain", "utf-8")


# -- generated messages ----------------------------------------------------------------

_NAMES = ["From", "To", "Cc", "Reply-To", "Subject", "Message-ID", "In-Reply-To",
          "References", "Content-Type", "Content-Disposition", "Content-Transfer-Encoding",
          "X-Weird", "from", "TO", "Content-type"]
_VALUE_BITS = [
    "a@b.example", "Ana <ana@x.example>", "Ana B. <ana@x.example>", '"Ana, B" <a@x.example>',
    "ana@x.example (Ana)", "<a@x.example>", "a@x.example, b@y.example", ", ,", "Ana",
    "=?utf-8?q?Jos=C3=A9?= <j@x.example>", "Jos\u00e9 <j@x.example>", "a@[1.2.3.4]",
    "group: a@x.example;", "a@x.example,", "<a@x.example> trailing", "a.@x", ".a@x",
    "a..b@x.example", "Ana <a@x.example", "a\\b@x", "a@x.example\t", "Na\tme <n@x.e>",
    "text/plain", "text/plain; charset=utf-8", 'text/plain; charset="ISO-8859-1"',
    "text/plain; charset=utf-8; format=flowed", "text/html; charset=us-ascii",
    "TEXT/PLAIN; CHARSET=UTF-8", "text/plain;charset=utf-8;", "text/plain; charset*=utf-8''x",
    "text/plain; name=x.txt", "text/plain; NAME=x", "multipart/mixed; boundary=zz",
    "message/rfc822", "application/pdf", "text", "text/plain; charset=\u00e9",
    "text/plain; charset=utf-8 ; x=1", "attachment; filename=a.txt", "inline", "base64",
    "quoted-printable", "<id@x.example>", "<a@x> <b@y>", "Re: hello",
    "=?iso-8859-1?q?caf=E9?=", "", " ", "x\x00y", "\xe9t\xe9",
]
_LINE_ENDS = ["\r\n", "\n", "\r"]


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    nl = draw(st.sampled_from(_LINE_ENDS))
    lines: list[str] = []
    if draw(st.integers(0, 9)) == 0:
        lines.append("From sender@example.com Sun Nov 22 10:00:00 2026")
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 14))
        value = draw(st.sampled_from(_VALUE_BITS))
        if kind == 0:
            lines.append(" folded " + value)  # continuation (maybe the first line)
        elif kind == 1:
            lines.append(": no name")
        elif kind == 2:
            lines.append("Bad Name: x")
        elif kind == 3:
            lines.append("From " + value)
        else:
            gap = draw(st.sampled_from(["", " ", "  ", "\t"]))
            lines.append(f"{draw(st.sampled_from(_NAMES))}:{gap}{value}")
    body = draw(st.sampled_from(["hello", "", "line 1" + nl + "line 2" + nl,
                                 "--zz" + nl + "Content-Type: text/plain" + nl + nl + "x" + nl
                                 + "--zz--", "caf\xe9 \u20ac", "\u00e9" * 3 + "\r\rx\n"]))
    separator = draw(st.sampled_from([nl, nl, "", "\r\n", "\n", "\r"]))
    text = nl.join(lines) + (nl if lines else "") + separator + body
    encoding = draw(st.sampled_from(["utf-8", "latin-1"]))
    return text.encode(encoding, "replace")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(raw=_messages())
def test_generated_messages_parse_the_same(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    _check(raw, monkeypatch)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_random_bytes_parse_the_same(raw: bytes) -> None:
    fast = parse._simple_tree(raw)
    if fast is not None:
        assert _state(fast) == _state(email.message_from_bytes(raw))


# -- addresses ---------------------------------------------------------------------------

_ADDRESS_BITS = ["a@b.example", "Ana", "Ana B.", "<", ">", ",", " ", "\t", '"', "(", ")",
                 "@", ".", "x", "\u00e9", ";", ":", "[", "]", "\\", "=?", "a.b", "..",
                 "O'Neil", "+tag", "-", "_", "\x00", "\x7f", "\u2028", "\xa0"]


_WORDS = ["Ana", "B.", "x", "Jos\u00e9", "O'Neil", "(c)", "(", ")", '"', '"Q"', "@", ".", ":",
          ";", "[x]", "\\", "<", ">", "", "a@b", "\xa0", "\u2028", "\x7f", "\x00", "=", "\t"]
_ADDRS = ["a@b.example", "A.B@C.example", "a+tag@b-c.example", "a..b@c", ".a@b", "a@b.",
          "a@[1.2.3.4]", "a@b@c", "a b@c", "a@b (c)", '"a b"@c', "", "a", "@b", "a@"]


@st.composite
def _address_lists(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([" ", "  ", "\t", ""])).join(
            draw(st.lists(st.sampled_from(_WORDS), max_size=4)))
        addr = draw(st.sampled_from(_ADDRS))
        form = draw(st.integers(0, 3))
        piece = (addr if form == 0 else f"{name} <{addr}>" if form == 1
                 else f"{name}<{addr}>" if form == 2 else f"{name} {addr}")
        pieces.append(draw(st.sampled_from(["", " ", "\t"])) + piece
                      + draw(st.sampled_from(["", " ", " x", ">"])))
    return draw(st.sampled_from([",", ", ", " ,"])).join(pieces)


@settings(max_examples=3000, deadline=None)
@given(value=_address_lists())
def test_simple_addresses_equal_getaddresses(value: str) -> None:
    fast = parse._simple_addresses(value)
    if fast is not None:
        assert fast == parse._legacy_addresses(value)


@settings(max_examples=1000, deadline=None)
@given(parts=st.lists(st.sampled_from(_ADDRESS_BITS), max_size=12))
def test_simple_addresses_equal_getaddresses_on_fragments(parts: list[str]) -> None:
    value = "".join(parts)
    fast = parse._simple_addresses(value)
    if fast is not None:
        assert fast == parse._legacy_addresses(value)


@pytest.mark.parametrize("value", [
    "a@b.example", "Ana <a@b.example>", "Ana B. <a@b.example>", "<a@b.example>",
    "a@b.example, Bo <b@c.example>", "Ana<a@b.example>", "  Ana   B  <a@b.example>  ",
    "A@B.Example", "Jos\u00e9 <j@x.example>", "O'Neil <o@x.example>",
])
def test_simple_addresses_take_common_forms(value: str) -> None:
    fast = parse._simple_addresses(value)
    assert fast is not None
    assert fast == parse._legacy_addresses(value)


@pytest.mark.parametrize("value", [
    '"Ana, B" <a@b.example>', "Ana (c) B <a@b.example>", "Ana <a@b.example> (c)",
    "a@b.example (Ana)", "group: a@b.example;", "a@[1.2.3.4]",
    "Ana <a@b.example> x", "a..b@c.example", "a@b..example", "a b@c.example", "Ana <a b@c>",
    "a@b.example,,c@d.example", "", "Ana", "a\\@b@c.example",
])
def test_simple_addresses_leave_the_rest_to_getaddresses(value: str) -> None:
    assert parse._simple_addresses(value) is None


# -- content type ------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(value=st.sampled_from(_VALUE_BITS), extra=st.sampled_from(["", ";", " ; a=b", '"', "'"]),
       second=st.sampled_from([None, "text/html; charset=latin-1", "text/plain"]))
def test_simple_content_type_equals_the_stdlib(value: str, extra: str,
                                               second: str | None) -> None:
    part = email.message.Message()
    part["Content-Type"] = value + extra
    if second is not None:
        part["Content-Type"] = second
    fast = parse._simple_content_type(part)
    if fast is not None:
        assert fast == (part.get_content_type(), part.get_content_charset())
        assert parse._filename(part) == ""


def test_a_part_without_content_type_has_its_default_type() -> None:
    part = email.message.Message()
    part.set_default_type("message/rfc822")  # as in a multipart/digest
    assert parse._simple_content_type(part) == ("message/rfc822", None)
    part["Content-Disposition"] = "inline"
    assert parse._simple_content_type(part) is None


_SHAPES = [
    "Content-Type: message/rfc822\n\nFrom: a@b\nSubject: inner\n\nbody\n",
    "Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\nStatus: 5.0.0\n",
    "Content-Type: Message/Partial; id=1\n\nbody\n",
    "Content-Type: multipart/mixed\n\n--zz\nContent-Type: text/plain\n\nx\n--zz--\n",
    "Content-Type: multipart/mixed; boundary=zz\n\n--zz\n\nx\n--zz--\n",
    "Content-Type: MULTIPART/alternative; boundary=zz\n\nno parts\n",
    "From sender Sun Nov 22 10:00:00 2026\nSubject: x\n\nbody\n",
    "Subject: x\nFrom sender Sun Nov 22\n\nbody\n",
    "Subject: x\nFrom sender Sun Nov 22\nTo: a@b\n\nbody\n",
    " folded first\nSubject: x\n\nbody\n",
    ": no name\nSubject: x\n\nbody\n",
    "Subject: x\nnot a header line\nbody\n",
    "Subject: x\nTo: a@b\n",
    "Subject: x",
    "",
    "\n\nbody",
    "Subject: x\r\n\rbody\r\n",
    "Subject: x\r\r\nbody\r\n",
    "Subject: a\r\n b\r\n\tc\r\n\r\nbody",
    "Subject: x\x0bx\x0c\x1c\x85\u2028\n\nbody\x0b\x1c\n",
    "Subject:\n\nbody",
    "Subject:x\nContent-Type: text/html; charset=\"UTF-8\"\n\n<p>caf\u00e9</p>\n",
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\nY2Fmw6k=\n",
    "Content-Type: application/pdf\n\n%PDF\n",
    "Content-Type: text/plain; name=a.txt\n\nx\n",
    "Content-Disposition: attachment\n\nx\n",
]


@pytest.mark.parametrize("text", _SHAPES)
@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_shapes_the_parser_treats_specially_parse_the_same(
    text: str, nl: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _check(text.replace("\n", nl).encode("utf-8"), monkeypatch)


def test_parsed_fields_are_what_they_were() -> None:
    """A pinned result, so both ways cannot drift together."""
    raw = (b"From: Ana  B. <Ana@Customer.Example>\r\nTo: support@helpdesk.example, "
           b"Bo <bo@x.example>\r\nSubject: Re: [Ticket#1] hi\r\nMessage-ID: <m1@x>\r\n"
           b"In-Reply-To: <p@x>\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\r\n"
           b"caf\xc3\xa9\r\n")
    m = parse_message(raw)
    assert parse._simple_tree(raw) is not None
    assert dataclasses.asdict(m) | {"raw": b"", "headers": {}} == dataclasses.asdict(
        ParsedMessage(raw=b"", message_id="m1@x", subject="Re: [Ticket#1] hi",
                      from_name="Ana B.", from_address="ana@customer.example", reply_to=(),
                      to=("support@helpdesk.example", "bo@x.example"), cc=(),
                      in_reply_to=("p@x",), references=(), text="café\n", html="",
                      attachments=(), headers={}, content_type="text/plain", defects=()))
