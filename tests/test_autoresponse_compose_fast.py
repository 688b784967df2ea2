"""The cheaper composer writes exactly the bytes of the previous one.

`_reference_compose` below is the composer as it was before the fast paths (email.utils'
date, b2a_qp over each whole part, no caches), kept here as the oracle: every generated
message must come out byte for byte the same, so nothing a recipient, a DKIM signature
or a test could see has changed.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.policy
import email.utils
import itertools
import os
import random
import time
from email import message_from_bytes
from email.header import Header
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import autoresponse.compose as compose_mod
from autoresponse.compose import (
    MAX_REFERENCES,
    Outgoing,
    _msgid_ok,
    clean_header_value,
    compose,
    format_date,
    new_message_id,
    qp_body,
    valid_address,
)

# -- the oracle: the composer before the fast paths ------------------------------------


def _ref_text_header(value: str) -> str:
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _ref_address(display: str, addr_spec: str) -> str:
    if not valid_address(addr_spec):
        raise ValueError(f"not a single mailbox: {addr_spec!r}")
    name = clean_header_value(display, 200)
    if not name:
        return addr_spec
    if name.isascii():
        return email.utils.formataddr((name, addr_spec))
    return f"{_ref_text_header(name)} <{addr_spec}>"


def _ref_part(subtype: str, text: str) -> tuple[list[tuple[str, str]], bytes]:
    lines = text.splitlines()
    if all(c in "\t\n" or " " <= c <= "~" for c in text) \
            and all(len(line) <= 76 for line in lines):  # 7bit: short ASCII lines
        return [("Content-Type", f'text/{subtype}; charset="utf-8"'),
                ("Content-Transfer-Encoding", "7bit")], \
            "".join(f"{line}\r\n" for line in lines or [""]).encode("ascii")
    return [("Content-Type", f'text/{subtype}; charset="utf-8"'),
            ("Content-Transfer-Encoding", "quoted-printable")], _ref_qp(text)


def _ref_qp(text: str) -> bytes:
    data = "\n".join(text.splitlines()).encode("utf-8") + b"\n"
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _reference_compose(out: Outgoing, boundary_hex: str) -> bytes:
    head: list[tuple[str, str]] = [
        ("From", _ref_address(out.from_name, out.from_address)),
        ("To", _ref_address(out.to_name, out.to_address)),
        ("Subject", _ref_text_header(clean_header_value(out.subject, 900))),
        ("Date", email.utils.format_datetime(out.date or dt.datetime.now(dt.UTC))),
        ("Message-ID", f"<{out.message_id}>"),
    ]
    refs = [r for r in out.references if _msgid_ok(r)]
    if out.in_reply_to and _msgid_ok(out.in_reply_to):
        head.append(("In-Reply-To", f"<{out.in_reply_to}>"))
        if out.in_reply_to not in refs:
            refs.append(out.in_reply_to)
    if refs:
        head.append(("References", "\r\n ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:])))
    head += [
        ("Auto-Submitted", out.auto_submitted),
        ("X-Auto-Response-Suppress", "All"),
        ("Precedence", "bulk"),
        (out.loop_header, _ref_text_header(clean_header_value(
            out.loop_value or out.from_address, 200))),
        ("MIME-Version", "1.0"),
    ]
    text_part = _ref_part("plain", out.text)
    if out.html is None:
        head += text_part[0]
        body = text_part[1]
    else:
        boundary = f"=_tg_{boundary_hex}"
        head.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
        chunks = [b"This is a multi-part message in MIME format.\r\n"]
        for part_head, part_body in (text_part, _ref_part("html", out.html)):
            chunks.append(f"--{boundary}\r\n".encode())
            chunks.append("".join(f"{n}: {v}\r\n" for n, v in part_head).encode() + b"\r\n")
            chunks.append(part_body)
        chunks.append(f"--{boundary}--\r\n".encode())
        body = b"".join(chunks)
    header_bytes = "".join(f"{n}: {v}\r\n" for n, v in head).encode("ascii")
    return header_bytes + b"\r\n" + body


# -- inputs -----------------------------------------------------------------------------

BOUNDARY = "0123456789abcdef01234567"

NAMES = ["", "Ana", "Ana García", "Jürgen Müller", "Иван Петров", "王小明", "محمد علي",
         "Νίκος", "山田 太郎", "O'Brien, Pat", 'Dr. "Who"', "a" * 250, "Ünïcödé " * 40,
         "Eve\r\nBcc: victim@evil.example", "Eve\nTo: x@evil.example", "tab\there",
         "\u2028Bcc: v@evil.example", "=?utf-8?q?already?=", "emoji 😀 name"]
SUBJECTS = ["[Ticket#2026112210000017] Printer on fire", "", "Re: Fwd: factura nº 7",
            "Привет, мир " * 12, "長い件名" * 40, "x" * 1200,
            "Hi\r\nBcc: victim@evil.example", "Hi\x00\x0bBcc: v@evil.example",
            "mixed ascii and ünïcode " * 9, "=?utf-8?b?Zm9v?= literal"]
LINE = ("Please keep \"[Ticket#2026112210000017]\" in the subject when you write about "
        "this matter again")
TEXTS = ["Hi\n", "", "\n\n", ".\nlone dot\n.", "-- \nSig\n", "tab at end\t\n",
         LINE + "\n" + LINE + " \n", "x" * 76 + "\n" + "y" * 77 + "\n" + "z" * 151,
         "a=b\nq=" * 30, "c=" + "d" * 80, "e" * 73 + "=\n" + "f" * 72 + "=",
         "Grüße\nñandú\n", "\r\n".join(["crlf"] * 5),
         "old\rmac\rlines", "form\x0cfeed\x0bvt\x1cfs\x85nel\u2028ls",
         "ctrl \x01 \x7f char\n", "> " + "word " * 40 + "\n" * 3]
HTMLS = [None, "<p>Hi</p>", '<p style="color: #666; font-size: smaller">This is an '
         'automatic confirmation.</p>\n<p>&mdash;<br>Support</p>', "<p>Grüße</p>",
         '<a href="x">' + "y" * 100 + "</a>"]
DATES = [dt.datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=dt.UTC),
         dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=dt.UTC),
         dt.datetime(2026, 1, 1, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
         dt.datetime(2026, 1, 1, 5, 6, 7)]


def _outgoing(i: int, name: str, subject: str, text: str, html: str | None) -> Outgoing:
    return Outgoing(
        from_name=NAMES[(i * 7) % len(NAMES)] or "Support", from_address="support@helpdesk.example",
        to_name=name, to_address=f"c{i}@customer.example", subject=subject, text=text, html=html,
        message_id=f"{i}.1.2@helpdesk.example", in_reply_to=["", "c@x", "bad id"][i % 3],
        references=tuple(f"r{k}@x" for k in range(i % 25)) + (("<bad>",) if i % 4 else ()),
        auto_submitted=["auto-replied", "auto-generated"][i % 2],
        loop_header="X-Ticketgate-Loop", loop_value=["", "support@helpdesk.example",
                                                     "Lööp\r\nBcc: x@y"][i % 3],
        date=DATES[i % len(DATES)],
    )


@pytest.fixture(autouse=True)
def _fixed_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose_mod, "boundary_token", lambda: BOUNDARY)


def test_compose_bytes_equal_the_reference_composer() -> None:
    combos = itertools.product(NAMES, SUBJECTS, TEXTS, HTMLS)
    checked = 0
    for i, (name, subject, text, html) in enumerate(combos):
        if i % 7:  # a spread of ~1,600 of the ~15,000 combinations
            continue
        out = _outgoing(i, name, subject, text, html)
        assert compose(out) == _reference_compose(out, BOUNDARY), out
        checked += 1
    assert checked > 1000


@pytest.mark.parametrize("html", HTMLS)
@pytest.mark.parametrize("text", TEXTS)
def test_every_text_and_html_part_equals_the_reference(text: str, html: str | None) -> None:
    out = _outgoing(1, "Ana", "Hi", text, html)
    assert compose(out) == _reference_compose(out, BOUNDARY)


def test_cached_from_line_still_refuses_a_bad_address_every_time() -> None:
    bad = _outgoing(0, "Ana", "Hi", "x", None)
    bad = Outgoing(**{**bad.__dict__, "from_address": "a@b\r\nBcc: v@evil.example"})
    for _ in range(2):
        with pytest.raises(ValueError):
            compose(bad)


@pytest.mark.parametrize("name", NAMES)
def test_injection_in_names_subject_and_loop_value_adds_no_header(name: str) -> None:
    out = Outgoing(**{**_outgoing(2, name, name, "x", "<p>x</p>").__dict__,
                      "from_name": name, "loop_value": name})
    raw = compose(out)
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")
             if line and line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and names.count(b"to") == 1
    msg = message_from_bytes(raw, policy=email.policy.default)
    assert [a.addr_spec for a in msg["To"].addresses] == ["c2@customer.example"]


@given(st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(9999, 1, 1),
                    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5)),
                                               None])))
def test_format_date_equals_email_utils(when: dt.datetime) -> None:
    assert format_date(when) == email.utils.format_datetime(when)


def test_format_date_reuses_only_the_same_second() -> None:
    base = dt.datetime(2026, 11, 22, 23, 59, 59, 1, tzinfo=dt.UTC)
    # Each value after the first differs from the one before in one field only.
    sequence = [base, base.replace(microsecond=999_999)]
    for field_ in ("second", "minute", "hour", "day", "month", "year"):
        sequence += [base.replace(**{field_: getattr(base, field_) - 1}), base]
    for when in sequence:
        assert format_date(when) == email.utils.format_datetime(when)


_TEXT_ALPHABET = st.sampled_from(["a", "Z", " ", "\t", ".", "=", "-", "~", "\n", "\r",
                                  "\r\n", "é", "€", "😀", "\x00", "\x7f", "\x0b", "\x85",
                                  "\u2028", "x" * 70, "=" * 5, " " * 3])


@settings(max_examples=500)
@given(st.lists(_TEXT_ALPHABET, max_size=60).map("".join))
@example("." + "\n" + "x" * 80 + "=\n" + "y " * 50)
@example("=" * 26 + "\n" + "=" * 25 + "a\n-- \n")
@example("a" * 73 + "=\n" + "=" + "b" * 73 + "\n" + "c" * 72 + "=")  # 76 bytes escaped
def test_qp_body_equals_b2a_qp(text: str) -> None:
    assert qp_body(text) == _ref_qp(text)


# Only what qp_body's fast path takes (printable ASCII, tab, "\n"): long lines with and
# without escapes at every column, lone dots, whitespace before breaks.
_ASCII_ALPHABET = st.sampled_from(["a", " ", "\t", ".", "=", "\n", "=3D", "x" * 70,
                                   "y" * 25, "z" * 3, "\n.\n"])


@settings(max_examples=1000)
@given(st.lists(_ASCII_ALPHABET, max_size=40).map("".join))
@example("a" * 72 + "=" + "\n" + "b" * 73 + "=" + "\n" + "c" * 74 + "=")
@example("p" * 76 + "\n" + "q" * 75 + "=" + "\n" + "." + "\n" + "r" * 160 + " ")
def test_qp_body_fast_path_equals_b2a_qp(text: str) -> None:
    assert qp_body(text) == _ref_qp(text)


@settings(max_examples=1000)
@given(st.lists(_ASCII_ALPHABET | _TEXT_ALPHABET, max_size=40).map("".join))
@example("a" * 76 + "\n" + "b" * 76)  # 7bit at the limit
@example("a" * 77)  # one over: quoted-printable
@example("a" * 77 + "\n" + "b")  # the first line too long
@example("a\n" + "b" * 76 + "\n" + "c" * 77)  # the last line too long
@example("\n" * 3 + "d" * 77 + "\n")  # after empty lines
def test_part_is_7bit_only_for_short_ascii_lines(text: str) -> None:
    head, body = compose_mod._part(text, b"7bit", b"qp")
    ref_head, ref_body = _ref_part("plain", text)
    assert head == (b"7bit" if ref_head[1][1] == "7bit" else b"qp")
    assert body == ref_body


@pytest.mark.parametrize("domain", ["helpdesk.example", "", "x>", "x<>", "<>", "a>b", "é.example"])
def test_message_id_is_make_msgid_without_brackets(monkeypatch: pytest.MonkeyPatch,
                                                   domain: str) -> None:
    monkeypatch.setattr(time, "time", lambda: 1795000000.123456)
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    monkeypatch.setattr(compose_mod, "_pid", 4242)  # kept, not asked for every time
    monkeypatch.setattr(random, "getrandbits", lambda k: 12345678901234567890 % (1 << k))
    expected = email.utils.make_msgid(domain=domain or "ticketgate.invalid").strip("<>")
    assert new_message_id(domain) == expected


def test_message_ids_name_the_process_after_a_fork() -> None:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child process)
        os.write(write, new_message_id("helpdesk.example").encode())
        os._exit(0)
    os.close(write)
    try:
        os.waitpid(child, 0)
        theirs = os.read(read, 1000).decode()
    finally:
        os.close(read)
    assert theirs.split(".")[1] == str(child)
    assert new_message_id("helpdesk.example").split(".")[1] == str(os.getpid())


def test_message_ids_differ() -> None:
    ids = {new_message_id("helpdesk.example") for _ in range(1000)}
    assert len(ids) == 1000


_HEADER_PIECES = st.sampled_from(["a", "Ω", "é", " ", "  ", "\t", "\r\n", "\n", "\x00", "\x7f",
                                  "\x85", "\u2028", "\u2029", "\xa0", "\u3000", "\u2003",
                                  "\u200b", "\ufeff", "\x1c", "\x0b", "Bcc: x@y"])


@settings(max_examples=500)
@given(st.lists(_HEADER_PIECES, max_size=30).map("".join), st.sampled_from([3, 200, 500]))
@example(" lead", 500)
@example("trail ", 500)
@example("dou  ble", 500)
@example("nbsp\xa0here", 500)
def test_clean_header_value_equals_the_regex_path(value: str, limit: int) -> None:
    expected = " ".join(compose_mod._CONTROL.sub(" ", value).split())[:limit]
    assert clean_header_value(value, limit) == expected


def _outcome(fn: Any, *args: str) -> tuple[str, str]:
    """("ok", result) or (exception type, message): what compose() would record."""
    try:
        return "ok", fn(*args)
    except ValueError as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("addr", ["ana@customer.example", "ñandú@customer.example", "bad"])
@pytest.mark.parametrize("name", [*NAMES, "Plain Name", "a.b", "x\\y", 'q"uote', "(c)", "[x]"])
def test_address_equals_formataddr(name: str, addr: str) -> None:
    assert _outcome(compose_mod._address, name, addr) == _outcome(_ref_address, name, addr)
