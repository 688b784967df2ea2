"""Hostile header shapes cost bounded work (issue 15.3): encoded words past the per-value
and per-message limits are kept as written, not fed to the stdlib's quadratic decoder.
Speed itself is measured by `make bench BENCH_ARGS=shapes`, not here."""

from __future__ import annotations

import pytest

from gateway.mail import headers
from gateway.mail.parse import decode_header_value, parse_message

WORD = "=?utf-8?q?ab=C3=A9?="


def _subject_of(words: int) -> bytes:
    folded = "\r\n ".join([WORD] * words)
    return (f"From: a@customer.example\r\nTo: support@helpdesk.example\r\n"
            f"Message-ID: <w@customer.example>\r\nSubject: [Ticket#1] {folded}\r\n\r\nhi\r\n"
            ).encode()


def test_a_subject_of_40000_encoded_words_is_decoded_up_to_the_limit() -> None:
    parsed = parse_message(_subject_of(40_000))
    assert parsed.subject.startswith("[Ticket#1] abéabé")
    decoded, _, rest = parsed.subject.partition(" =?utf-8?q?")
    # The head is decoded and joined (RFC 2047 6.2); the tail stays as the sender wrote it.
    assert len(decoded) <= headers.DECODE_LIMIT
    assert rest.endswith("ab=C3=A9?=") and rest.count("?=") > 30_000


def test_a_value_under_the_limit_is_decoded_whole() -> None:
    value = " ".join([WORD] * 100)
    assert decode_header_value(value) == "abé" * 100


def test_the_cut_falls_between_words_so_no_word_is_half_decoded() -> None:
    value = " ".join([WORD] * 50)
    decoded = decode_header_value(value, limit=len(WORD) * 10 + 10)
    head, _, tail = decoded.partition(" ")
    assert head == "abé" * 10
    assert tail.split(" ") == [WORD] * 40


def test_headers_past_the_message_budget_are_kept_as_written() -> None:
    many = "".join(f"X-Tag: {WORD}\r\n" for _ in range(20_000))  # ~440 KB of words
    raw = f"From: a@customer.example\r\nSubject: s\r\n{many}\r\nhi\r\n".encode()
    tags = parse_message(raw).headers["x-tag"]
    assert tags[0] == "abé"
    assert tags[-1] == WORD
    decoded = sum(len(t) for t in tags if t == "abé")
    assert decoded <= headers.MESSAGE_DECODE_LIMIT


# -- many MIME parts -------------------------------------------------------------------------

def _parts(count: int, text: str = "see the logs") -> bytes:
    part = ("--B\r\nContent-Type: text/plain; name=a{n}.txt\r\n"
            "Content-Disposition: attachment\r\n\r\nx{n}\r\n")
    return ("From: a@customer.example\r\nTo: support@helpdesk.example\r\nSubject: s\r\n"
            "Message-ID: <p@customer.example>\r\nContent-Type: multipart/mixed; boundary=B\r\n"
            f"\r\n--B\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
            + "".join(part.format(n=n) for n in range(count - 1)) + "--B--\r\n").encode()


def test_parts_past_the_limit_are_not_read_and_the_message_says_so() -> None:
    from gateway.mail.mimetree import MAX_PARTS

    parsed = parse_message(_parts(3 * MAX_PARTS))
    assert parsed.text == "see the logs"  # the first parts are read as always
    assert len(parsed.attachments) == MAX_PARTS - 1
    assert parsed.attachments[-1].filename == f"a{MAX_PARTS - 2}.txt"
    assert any(d.startswith(f"more than {MAX_PARTS} MIME parts") for d in parsed.defects)
    assert parsed.raw.endswith(b"--B--\r\n")  # kept whole


def test_a_message_of_exactly_the_limit_is_read_whole() -> None:
    from gateway.mail.mimetree import MAX_PARTS

    parsed = parse_message(_parts(MAX_PARTS))
    assert len(parsed.attachments) == MAX_PARTS - 1
    assert not any("MIME parts" in d for d in parsed.defects)


def test_lines_that_only_look_like_delimiters_are_not_parts() -> None:
    """A pasted SQL dump: thousands of `-- ` lines in one text part."""
    dump = "\r\n".join(f"-- table {n}\r\nSELECT {n};" for n in range(5000))
    parsed = parse_message(_parts(2, text=dump))
    assert parsed.text.count("-- table") == 5000 and len(parsed.attachments) == 1
    assert parsed.defects == ()


# -- a huge header block ---------------------------------------------------------------------

def _junk_headers(before: str, after: str, fields: int = 120_000) -> bytes:
    junk = "".join(f"X-Junk-{n}: {'x' * 8}\r\n" for n in range(fields))  # ~2.5 MB
    return f"{before}{junk}{after}\r\nthe body\r\n".encode()


def test_fields_past_the_header_limit_are_not_read() -> None:
    from gateway.mail.mimetree import MAX_HEADER_BYTES

    raw = _junk_headers("From: Ana <ana@customer.example>\r\n", "Subject: hidden\r\n")
    assert len(raw) > 2 * MAX_HEADER_BYTES
    parsed = parse_message(raw)
    assert parsed.from_address == "ana@customer.example" and parsed.subject == ""
    assert parsed.text.strip() == "the body"
    assert sum(len(v) for v in parsed.headers.values()) < MAX_HEADER_BYTES // 20
    assert any(d.startswith(f"header block over {MAX_HEADER_BYTES} bytes") for d in parsed.defects)
    assert parsed.raw == raw


def test_a_header_block_under_the_limit_is_read_whole() -> None:
    parsed = parse_message(_junk_headers("", "Subject: seen\r\n", fields=20_000))
    assert parsed.subject == "seen" and len(parsed.headers["x-junk-19999"]) == 1
    assert parsed.defects == ()


def test_the_cut_falls_at_a_line_end_so_no_field_is_half_read() -> None:
    from gateway.mail.mimetree import MimeTree

    raw = b"Subject: one\r\nX-A: two\r\nX-B: three\r\n\r\nbody\r\n"
    for limit in (raw.index(b"X-B: th") + 6, raw.index(b"\r\nX-B") + 1):  # in X-B, in a CRLF
        tree = MimeTree(raw, max_head=limit)
        assert tree.root["x-a"] == "two" and tree.root["x-b"] is None
        assert tree.root.get_payload() == "body\r\n" and tree.root.defects == []


# -- header fields inside MIME parts ---------------------------------------------------------

def _fields(count: int) -> str:
    return "".join(f"X-Junk-{n}: xxxxxxxx\r\n" for n in range(count))  # ~22 bytes each


def _multipart(*parts: str) -> bytes:
    body = "".join(f"--B\r\n{part}\r\n" for part in parts)
    return ("From: a@customer.example\r\nSubject: s\r\nMessage-ID: <m@customer.example>\r\n"
            f"Content-Type: multipart/mixed; boundary=B\r\n\r\n{body}--B--\r\n").encode()


TEXT = "Content-Type: text/plain\r\n\r\nplease help"
NOTE = "Content-Type: text/plain; name=note.txt\r\nContent-Disposition: attachment\r\n\r\nnote"


@pytest.mark.parametrize("shape", ["fields", "forwarded", "report", "report-unclosed"])
def test_parts_past_the_header_budget_are_not_read(shape: str) -> None:
    from gateway.mail.mimetree import MAX_HEADER_BYTES

    junk = _fields(MAX_HEADER_BYTES // 20)
    blocks = "\r\n".join([_fields(MAX_HEADER_BYTES // 200)] * 20)  # each far under the budget
    bloated = {
        "fields": f"Content-Type: text/plain\r\n{junk}\r\nbody",
        "forwarded": f"Content-Type: message/rfc822\r\n\r\nSubject: fwd\r\n{junk}\r\nbody",
        "report": f"Content-Type: message/delivery-status\r\n\r\n{blocks}",
        "report-unclosed": f"Content-Type: message/delivery-status\r\n\r\n{blocks}",
    }[shape]
    raw = _multipart(TEXT, NOTE, bloated, NOTE)
    if shape == "report-unclosed":
        raw = raw.removesuffix(b"\r\n--B\r\n" + NOTE.encode() + b"\r\n--B--\r\n")
    parsed = parse_message(raw)
    assert parsed.text == "please help" and [a.filename for a in parsed.attachments] == [
        "note.txt"]
    assert any(d.startswith(f"header fields of MIME parts over {MAX_HEADER_BYTES} bytes")
               for d in parsed.defects), parsed.defects


def test_the_header_budget_is_for_all_parts_together() -> None:
    from gateway.mail.mimetree import MAX_HEADER_BYTES

    third = f"Content-Type: text/plain; name=a.txt\r\n{_fields(MAX_HEADER_BYTES // 66)}\r\na"
    parsed = parse_message(_multipart(TEXT, third, third, third, NOTE))
    assert [a.filename for a in parsed.attachments] == ["a.txt", "a.txt"]
    assert any("header fields of MIME parts" in d for d in parsed.defects)


def test_forwarded_messages_and_reports_under_the_budget_are_read_whole() -> None:
    forwarded = "Content-Type: message/rfc822\r\n\r\nSubject: fwd\r\nFrom: b@x.example\r\n\r\nhi"
    report = ("Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n"
              "\r\nFinal-Recipient: rfc822; a@x.example\r\nAction: failed\r\nStatus: 5.1.1")
    parsed = parse_message(_multipart(TEXT, forwarded, report, NOTE))
    assert parsed.defects == ()
    assert parsed.attachments[-1].filename == "note.txt"
