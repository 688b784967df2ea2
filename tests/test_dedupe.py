"""content_hash: one message delivered twice hashes the same, whatever the MTAs added."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.intake.dedupe import content_hash

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "mail").glob("*.eml"))
BASE = b"From: a@b.example\r\nSubject: hi\r\nMessage-ID: <m@b.example>\r\n\r\nbody\r\nline\r\n"


def _lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_lmtp_and_pipe_copies_of_a_fixture_hash_the_same(path: Path) -> None:
    raw = path.read_bytes()
    lmtp = b"Received: from mx by x\r\n\tfor <a@b>\r\nReturn-Path: <a@b>\r\n" + raw
    pipe = b"From a@b Sun Nov 22\nDelivered-To: a@b\nX-Original-To: a@b\n" + _lf(raw)
    assert content_hash(lmtp) == content_hash(pipe) == content_hash(raw)


@pytest.mark.parametrize("trace", [
    b"Received: from x\r\n", b"received :y\r\n", b"RECEIVED\t: z\r\n  folded\r\n\tagain\r\n",
    b"Return-Path: <a@b>\r\n", b"Delivered-To: a@b\r\n", b"x-original-to:a\r\n",
    b"X-Envelope-From: a\r\n", b"x-envelope-to: b\r\n", b"X-Spam-Status: No\r\n",
    b"X-Spam-Checker-Version: 1\r\n", b"X-Virus-Scanned: yes\r\n",
])
def test_trace_fields_with_their_continuation_lines_are_ignored(trace: bytes) -> None:
    at_end = BASE.replace(b"\r\n\r\n", b"\r\n" + trace + b"\r\n", 1)
    assert content_hash(trace + BASE) == content_hash(at_end) == content_hash(BASE)


@pytest.mark.parametrize("field", [
    b"Received-SPF: pass\r\n", b"X-Received: x\r\n", b"Subject-Received: x\r\n",
    b"Received x: y\r\n", b"X-Note: Received: inside\r\n",
])
def test_other_fields_count(field: bytes) -> None:
    assert content_hash(field + BASE) != content_hash(BASE)


def test_trace_names_in_the_body_count() -> None:
    moved = BASE + b"Received: from x\r\n"
    assert content_hash(moved) != content_hash(BASE)


def test_a_folded_line_of_a_kept_field_counts() -> None:
    assert content_hash(BASE.replace(b"hi\r\n", b"hi\r\n there\r\n")) != content_hash(BASE)


def test_content_differences_count() -> None:
    assert content_hash(BASE.replace(b"body", b"bodY")) != content_hash(BASE)
    assert content_hash(BASE + b"\r\n") != content_hash(BASE)
    assert content_hash(BASE.replace(b"\r\n\r\n", b"\r\n", 1)) != content_hash(BASE)


@pytest.mark.parametrize("raw", [b"", b"\r", b"From x", b"From x\n", b"A: b", b"A: b\r\n",
                                 b"\n\n", b"\r\n\r\n", b"Received: x"])
def test_degenerate_input_hashes_like_its_lf_form(raw: bytes) -> None:
    assert content_hash(raw) == content_hash(_lf(raw))
    assert len(content_hash(raw)) == 64
