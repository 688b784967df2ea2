"""Hostile header shapes cost bounded work (issue 15.3): encoded words past the per-value
and per-message limits are kept as written, not fed to the stdlib's quadratic decoder.
Speed itself is measured by `make bench BENCH_ARGS=shapes`, not here."""

from __future__ import annotations

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
