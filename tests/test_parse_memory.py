"""Large messages: parsed within a memory bound, and exactly as the stdlib parses them.

Issue 3: the server's peak while it receives a 25 MB message must stay under 4x the
message above idle. The stdlib parser alone reached 7.5x (tracemalloc) on such a
message; `gateway.mail.mimetree` leaves big bodies in the raw bytes instead. Every
structure test parses the same message both ways (big bodies cut out, and whole) and
compares every decoded field, and checks that the bodies really stayed in the raw bytes
(the tree falls back to a whole parse silently for structures it does not read alike).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.message
import hashlib
import os
import quopri
import random
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway.intake.core import Intake
from gateway.intake.dedupe import content_hash
from gateway.mail.envelope import Envelope
from gateway.mail.mimetree import BIG_BODY
from gateway.mail.parse import ParsedMessage, parse_message
from gateway.runtime import Store
from tests.support import MAIL
from ticketstore.models import Article, Attachment

T = TypeVar("T")


def _b64(data: bytes, nl: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", nl)


def _big_attachment_message(size: int, nl: bytes = b"\r\n") -> tuple[bytes, bytes]:
    """(message of about `size` bytes with one base64 attachment, the attachment)."""
    data = random.Random(size).randbytes(size * 3 // 4 * 76 // 77)
    raw = nl.join([
        b"From: Big Sender <big@customer.example>", b"To: support@helpdesk.example",
        b"Subject: a large attachment", b"Message-ID: <big-1@customer.example>",
        b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="XX"', b"",
        b"--XX", b"Content-Type: text/plain", b"", b"See attached.", b"--XX",
        b"Content-Type: application/octet-stream; name=big.bin",
        b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: attachment; filename=big.bin", b"", b"",
    ]) + _b64(data, nl) + b"--XX--" + nl
    return raw, data


def _fields(m: ParsedMessage) -> dict[str, object]:
    out = dataclasses.asdict(m)
    del out["defects"]
    out["attachments"] = [(a.filename, a.content_type, a.sha256) for a in m.attachments]
    return out


def _with_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """fn's result and the peak of Python memory allocated while it ran (tracemalloc)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _whole(raw: bytes) -> ParsedMessage:
    """`raw` parsed by the stdlib alone: no body is big enough to be left out."""
    return parse_message(raw, big_body=len(raw) + 1)


def _assert_cut_agrees(raw: bytes, factor: float = 2) -> ParsedMessage:
    """Parse with big bodies cut out: as the whole parse, and with a peak (tracemalloc)
    under `factor` times the message, where the whole parse takes 7-12x."""
    cut, peak = _with_peak(lambda: parse_message(raw))
    whole = _whole(raw)
    assert _fields(cut) == _fields(whole)
    assert set(cut.defects) == set(whole.defects)
    assert peak < factor * len(raw), f"peak {peak / len(raw):.1f}x the message"
    return cut


# -- memory -----------------------------------------------------------------------------


def test_25_mb_base64_attachment_parses_within_twice_the_message_size() -> None:
    raw, data = _big_attachment_message(25_000_000)
    m, peak = _with_peak(lambda: parse_message(raw))
    (att,) = m.attachments
    assert att.filename == "big.bin" and att.content == data
    assert m.text == "See attached."
    # Before: 193 MB (7.7x). Now the decoded attachment (0.73x) plus small change.
    assert peak < 2 * len(raw), f"peak {peak / 1e6:.0f} MB for {len(raw) / 1e6:.0f} MB"


def test_content_hash_does_not_copy_a_large_message() -> None:
    raw, _data = _big_attachment_message(8_000_000)
    digest, peak = _with_peak(lambda: content_hash(raw))
    assert peak < len(raw) // 4  # before: two whole copies (2x)
    # The value is what it always was: header block and body, CRLF as LF.
    head, _sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    assert digest == hashlib.sha256(head + b"\n\n" + body).hexdigest()


@pytest.mark.parametrize("raw", [
    b"", b"\r", b"\n\n", b"From x\n", b"From x\r\nA: b\r\n\r\nbody\r", b"A: b\n\r\nc\r\n",
    b"A: b\r\r\n\nc", b"Received: x\r\n y\r\nA: b\r\n\r\n\r\nbody\r\n",
    b"A: b\r\n\r\n" + b"x" * ((1 << 18) - 1) + b"\r\n" + b"y" * (1 << 18),
])
def test_content_hash_matches_the_whole_message_normalisation(raw: bytes) -> None:
    data = raw.replace(b"\r\n", b"\n")
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    head, sep, body = data.partition(b"\n\n")
    kept = [line for line in head.split(b"\n") if not line.lower().startswith(b"received:")
            and line[:1] not in (b" ", b"\t")]
    assert content_hash(raw) == hashlib.sha256(b"\n".join(kept) + sep + body).hexdigest()


# -- the splitter agrees with the generic path --------------------------------------------


def test_every_fixture_parses_the_same_with_every_body_cut_out() -> None:
    for path in sorted(MAIL.glob("*.eml")):
        raw = path.read_bytes()
        cut, whole = parse_message(raw, big_body=1), _whole(raw)
        assert _fields(cut) == _fields(whole), path.name
        assert set(cut.defects) == set(whole.defects), path.name


def _nested(nl: bytes) -> tuple[bytes, dict[str, bytes]]:
    rnd = random.Random(7)
    pdf = b"%PDF-1.4\n" + rnd.randbytes(600_000)
    png = b"\x89PNG\r\n\x1a\n" + rnd.randbytes(400_000)
    # Latin-1 text with long lines: quoted-printable soft breaks and =XX escapes.
    csv = ("Größe;Menge;Bemerkung\n" + "M;3;" + "Bücher für März " * 20 + "\n") * 800
    csv_bytes = csv.encode("latin-1")
    qp = quopri.encodestring(csv_bytes).replace(b"\n", nl)
    fwd = nl.join([b"From: a@x.example", b"Subject: =?utf-8?q?Weitergeleitet_=C3=BC?=",
                   b"Message-ID: <fwd@x.example>", b"", b"forwarded body", b""])
    lines = [
        b"From: =?utf-8?q?J=C3=BCrgen_Wei=C3=9F?= <j@kunde.example>",
        b"To: support@helpdesk.example", b"Cc: =?utf-8?q?M=C3=BCller=2C_Ana?= <ana@x.example>",
        b"Subject: =?utf-8?b?UmVjaG51bmcgZsO8ciBNw6Ryeg==?=", b"Message-ID: <nested@x.example>",
        b"In-Reply-To: <a@helpdesk.example>", b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="outer=_1"', b"",
        b"This is a multi-part message in MIME format.", b"--outer=_1xyz: not a delimiter",
        b"--outer=_1", b'Content-Type: multipart/alternative; boundary="alt_2"', b"",
        b"--alt_2", b"Content-Type: text/plain; charset=iso-8859-1",
        b"Content-Transfer-Encoding: quoted-printable", b"",
        b"Anbei die Rechnung f=FCr M=E4rz.", b"--alt_2",
        b"Content-Type: text/html; charset=utf-8", b"", "<p>Anbei die Rechnung für März.</p>"
        .encode(), b"--alt_2 x", b"--alt_2--", b"",
        b"--outer=_1", b'Content-Type: multipart/related; boundary="rel_3"', b"",
        b"--rel_3", b"Content-Type: text/html; charset=utf-8", b"", b'<img src="cid:logo">',
        b"--rel_3", b"Content-Type: image/png", b"Content-ID: <logo@kunde.example>",
        b"Content-Transfer-Encoding: base64", b"", _b64(png, nl) + b"--rel_3--", b"",
        b"--outer=_1  ",  # blanks after a delimiter are allowed
        b"--outer=_1",  # a second delimiter line in a row: no empty part
        b"Content-Type: application/pdf; name*=utf-8''Rechnung%20M%C3%A4rz.pdf",
        b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: attachment; filename*=utf-8''Rechnung%20M%C3%A4rz.pdf", b"",
        _b64(pdf, nl) + b"--outer=_1",
        b"--outer=_1", b'Content-Type: text/csv; name="=?iso-8859-1?q?Gr=F6=DFen.csv?="',
        b"Content-Transfer-Encoding: quoted-printable",
        "Content-Disposition: attachment; filename=\"Übersicht €.csv\"".encode(), b"", qp,
        b"--outer=_1", b"Content-Type: message/rfc822", b"", fwd,
        b"--outer=_1--", b"epilogue text", b"",
    ]
    raw = nl.join(lines)
    return raw, {"pdf": pdf, "png": png, "csv": csv_bytes}


@pytest.mark.parametrize("nl", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_nested_multiparts_base64_quoted_printable_and_non_ascii_names(nl: bytes) -> None:
    raw, data = _nested(nl)
    m = _assert_cut_agrees(raw)
    assert m.subject == "Rechnung für März"
    assert m.text.startswith("Anbei die Rechnung für März.")
    names = [(a.filename, a.content_type) for a in m.attachments]
    assert names == [
        ("logo@kunde.example", "image/png"),
        ("Rechnung März.pdf", "application/pdf"),
        ("Übersicht €.csv", "text/csv"),
        ("Weitergeleitet ü.eml", "message/rfc822"),
    ]
    by_type = {a.content_type: a.content for a in m.attachments}
    assert by_type["image/png"] == data["png"]
    assert by_type["application/pdf"] == data["pdf"]
    assert by_type["text/csv"].replace(b"\r\n", b"\n") == data["csv"]


def test_big_root_leaf_and_padding_repair() -> None:
    data = os.urandom(BIG_BODY * 12 + 2)
    body = base64.b64encode(data).rstrip(b"=")  # padding lost on the way
    raw = (b"Subject: raw leaf\r\nContent-Type: application/zip; name=x.zip\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + body)
    with pytest.raises(binascii.Error):
        binascii.a2b_base64(body)  # binascii alone cannot: the stdlib's repair is used
    m = _assert_cut_agrees(raw, factor=5)  # the stdlib decodes a str copy
    assert m.attachments[0].content == data and m.content_type == "application/zip"


def test_big_8bit_text_part_is_the_text_body() -> None:
    text = "Protokoll: Größe überschritten – bitte prüfen.\n" * 20_000
    raw = (b'Subject: log\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
           b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
           + text.encode() + b"--b--\n")
    m = _assert_cut_agrees(raw, factor=5)  # text: str copies
    assert m.text == text.removesuffix("\n")


_B64 = b"Content-Transfer-Encoding: base64\n\n"


@pytest.mark.parametrize(("head", "tail", "text", "defect"), [
    pytest.param(b'Subject: cut\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n\ntext\n'
                 b"--b\nContent-Type: application/octet-stream\n" + _B64, b"",
                 "text", "CloseBoundaryNotFoundDefect",
                 id="unterminated multipart keeps the truncated attachment"),
    pytest.param(b'Subject: x\nContent-Type: multipart/mixed; boundary="o"\n\n--o\n'
                 b'Content-Type: multipart/mixed; boundary="i"\n\n--i\n\ninner text\n--i\n'
                 b"Content-Type: application/octet-stream\n" + _B64,
                 b"--o\nContent-Type: text/plain\n\nafter\n--o--\n", "inner text\nafter",
                 "CloseBoundaryNotFoundDefect",
                 id="outer boundary ends an unterminated inner multipart"),
])
def test_broken_multiparts_keep_their_big_attachment(
    head: bytes, tail: bytes, text: str, defect: str
) -> None:
    data = os.urandom(BIG_BODY * 8)
    m = _assert_cut_agrees(head + base64.encodebytes(data) + tail)
    assert m.text == text
    assert m.attachments[0].content == data
    assert defect in m.defects


@pytest.mark.parametrize(("raw", "text", "defect"), [
    pytest.param(b'Subject: broken\nContent-Type: multipart/mixed; boundary="declared"\n\n'
                 b"--used\nContent-Type: text/plain\n\nsee the screenshot\n--used\n"
                 b"Content-Type: image/png; name=s.png\n" + _B64, "see the screenshot",
                 "StartBoundaryNotFoundDefect", id="declared boundary never used"),
    pytest.param(b"Subject: no boundary\nContent-Type: multipart/mixed\n\n--used\n"
                 b"Content-Type: text/plain\n\nhello\n--used\nContent-Type: application/pdf\n"
                 + _B64, "hello", "NoBoundaryInMultipartDefect", id="no boundary parameter"),
])
def test_multiparts_split_on_an_undeclared_boundary_keep_their_big_attachment(
    raw: bytes, text: str, defect: str
) -> None:
    """Only declared boundaries are seen before parsing: these are parsed whole."""
    data = os.urandom(BIG_BODY * 8)
    m = parse_message(raw + base64.encodebytes(data) + b"--used--\n")
    assert m.text == text
    assert m.attachments[0].content == data
    assert defect in m.defects


def test_multipart_digest_parts_are_forwarded_messages() -> None:
    inner = b"Subject: inner\n\n" + b"x" * (BIG_BODY * 2)
    raw = (b'Subject: d\nContent-Type: multipart/digest; boundary="d"\n\n--d\n\n' + inner
           + b"\n--d--\n")
    m = parse_message(raw)
    assert _fields(m) == _fields(_whole(raw))
    assert [(a.filename, a.content_type, a.content) for a in m.attachments] == [
        ("inner.eml", "message/rfc822", inner)]


@pytest.mark.parametrize("nl", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_big_attachment_of_a_forwarded_message_stays_in_the_raw_bytes(nl: bytes) -> None:
    data = os.urandom(BIG_BODY * 8)
    inner = nl.join([b"Subject: the original", b'Content-Type: multipart/mixed; boundary="i"',
                     b"", b"--i", b"Content-Type: text/plain", b"", b"original text", b"--i",
                     b"Content-Type: application/pdf; name=a.pdf",
                     b"Content-Transfer-Encoding: base64", b"", b""]) + base64.encodebytes(
        data).replace(b"\n", nl) + b"--i--" + nl
    raw = nl.join([b"Subject: Fwd: the original", b'Content-Type: multipart/mixed; boundary="o"',
                   b"", b"--o", b"Content-Type: text/plain", b"", b"see below", b"--o",
                   b"Content-Type: message/rfc822", b"", inner + b"--o--", b""])
    m = _assert_cut_agrees(raw, factor=3)  # the .eml: the body with LF line ends
    (fwd,) = m.attachments
    assert fwd.filename == "the original.eml"
    assert fwd.content == inner.replace(b"\r\n", b"\n")  # as the stdlib writes it: LF
    assert parse_message(fwd.content).attachments[0].content == data


@pytest.mark.parametrize(("cte", "body"), [
    ("base64", b"QUJD\r\nREVG\r\n"), ("base64", b"QUJD REVG"), ("base64", b"QUJ*D"),
    ("base64", b"QQ==QUJD"), ("base64", b"QUJDR"), ("quoted-printable", b"a=3Db=\r\nc\r\n"),
    ("quoted-printable", b"caf=E9 =\nx"), ("quoted-printable", b"=ZZ bad escape"),
    ("7bit", b"plain\r\ntext\r\n"), ("", b"\xff\xfe raw 8-bit"),
    ("x-uuencode", b"begin 644 x\n#86)C\n`\nend\n"),
])
def test_a_body_left_in_the_raw_bytes_decodes_as_the_stdlib_decodes(cte: str, body: bytes
                                                                    ) -> None:
    """Base64 is decoded by binascii straight from the raw bytes, the rest by the stdlib."""
    raw = (b"Content-Type: application/octet-stream\n"
           + (b"Content-Transfer-Encoding: %s\n" % cte.encode() if cte else b"")
           + b"\n" + body)
    (att,) = parse_message(raw, big_body=1).attachments
    assert att.content == email.message_from_bytes(raw).get_payload(decode=True)


def test_delimiter_lines_in_a_row_make_no_empty_part() -> None:
    # The stdlib swallows every delimiter line that follows another, a close one too.
    raw = (b'Subject: x\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n--b--\n'
           b"Content-Type: text/plain\n\nafter the swallowed close\n")
    m = parse_message(raw, big_body=1)
    assert _fields(m) == _fields(_whole(raw))
    assert m.text == "after the swallowed close"


def test_large_attachments_are_stored_byte_for_byte_and_in_order(
    intake: Intake, store: Store
) -> None:
    """On SQLite big attachments are written through blob I/O (gateway/intake/core.py)."""
    rnd = random.Random(3)
    first, small, last = rnd.randbytes(1_500_000), b"tiny", rnd.randbytes((1 << 20) + 1)
    parts = b"".join(
        b"--b\nContent-Type: application/octet-stream; name=%s\n"
        b"Content-Transfer-Encoding: base64\n\n%s" % (name, base64.encodebytes(data))
        for name, data in ((b"first.bin", first), (b"small.bin", small), (b"last.bin", last)))
    raw = (b"From: a@customer.example\nSubject: files\nMessage-ID: <files@customer.example>\n"
           b'Content-Type: multipart/mixed; boundary="b"\n\n' + parts + b"--b--\n")
    d = intake.process(raw, Envelope("a@customer.example", ("support@helpdesk.example",)))
    with store.factory() as session:
        rows = session.execute(select(Attachment.filename, Attachment.size, Attachment.content)
                               .where(Attachment.article_id == d.article_id)
                               .order_by(Attachment.id)).all()
        stored_raw = session.scalar(select(Article.raw).where(Article.id == d.article_id))
    assert [(r.filename, r.size, r.content) for r in rows] == [
        ("first.bin", len(first), first), ("small.bin", 4, small), ("last.bin", len(last), last)]
    assert stored_raw == raw


_PIECES = [
    b"--b", b"--b--", b"--c", b"--c--", b"--b ", b"--bx", b"--", b"", b"X: y", b" folded",
    b"Content-Type: multipart/mixed; boundary=c",
    b'Content-Type: multipart/alternative; boundary="b"',
    b"Content-Type: multipart/mixed", b"Content-Type: message/rfc822", b"Subject: inner",
    b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/html",
    b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable",
    b'Content-Disposition: attachment; filename="a\xc3\xa4.txt"', b"QUJDREVG", b"QUJ=",
    b"caf=E9=", b"hello world", b"Gr\xc3\xbc\xc3\x9fe",
]
_ROOTS = [b'Content-Type: multipart/mixed; boundary="b"', b"Content-Type: multipart/related; "
          b"boundary=b", b"Content-Type: multipart/mixed", b"Content-Type: text/plain"]


@settings(max_examples=300, deadline=None)
@given(root=st.sampled_from(_ROOTS), nl=st.sampled_from([b"\n", b"\r\n"]),
       lines=st.lists(st.tuples(st.sampled_from(_PIECES),
                                st.sampled_from([b"\n", b"\r\n", b"\r", b""])), max_size=40),
       big_body=st.sampled_from([1, 5, 40]))
def test_random_structures_parse_the_same_with_bodies_cut_out(
    root: bytes, nl: bytes, lines: list[tuple[bytes, bytes]], big_body: int
) -> None:
    """Boundary lines, lone CRs, broken and nested structure, big and small parts."""
    raw = b"Subject: s" + nl + root + nl + nl + b"".join(a + b for a, b in lines)
    assert _fields(parse_message(raw, big_body=big_body)) == _fields(_whole(raw))


@pytest.mark.parametrize("raw", [
    # Found by fuzzing: a repair boundary on the body's first line after a lone CR ...
    b"Content-Type:multipart/\r--x\n--b",
    # ... a repaired multipart whose new boundary only closes is not repaired again ...
    b"Content-Type:multipart/\n--b\r--c--\n--c",
    # ... and the line end before a delimiter goes, except from an unsplit multipart.
    b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\nhello\n\n--b--\n',
    b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: multipart/mixed;'
    b' boundary="c"\n\nno delimiter\n\n--b--\n',
    # ... and a part the message ends in without a close delimiter loses its last line end.
    b'Subject: s\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
    b"Content-Type: text/plain; charset=utf-8\n\n--c\n",
])
def test_fuzzing_finds_stay_fixed(raw: bytes) -> None:
    assert _fields(parse_message(raw, big_body=1)) == _fields(_whole(raw))


@pytest.mark.parametrize("raw", [
    # The stdlib takes a `From ` line that ends a header block for the first body line ...
    b"Subject: s\nContent-Type: text/plain\nFrom a@x.example\n\nbody\n",
    # ... and a delimiter of a multipart already closed for text.
    b'Content-Type: multipart/mixed; boundary="a"\n\n--a\nContent-Type: multipart/mixed; '
    b'boundary="b"\n\n--b\nContent-Type: text/plain\n\nhello\n--b--\n--a\n'
    b"Content-Type: text/plain\n\nx\n--b\nContent-Type: application/pdf\n\n%PDF\n--a--\n",
])
def test_structures_read_differently_before_parsing_are_parsed_whole(raw: bytes) -> None:
    m = parse_message(raw, big_body=1)
    assert _fields(m) == _fields(_whole(raw))
    assert "ticketgate-cut" not in m.text
