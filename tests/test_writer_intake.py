"""content_hash's cheaper header handling hashes exactly what the line-by-line one did."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.intake.core import TRACE_HEADERS, content_hash

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "mail").glob("*.eml"))
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def _reference(raw: bytes) -> str:
    """content_hash as it was written first: every header line looked at in Python."""
    start = 0
    if raw.startswith(b"From "):
        start = raw.find(b"\n") + 1 or len(raw)
    ends = [(i, n) for i, n in ((raw.find(b"\n\n", start), 2), (raw.find(b"\n\r\n", start), 3))
            if i >= 0]
    if ends:
        nl, width = min(ends)
        head_end = nl - 1 if nl > start and raw[nl - 1] == 0x0D else nl
        head, sep, body = raw[start:head_end].replace(b"\r\n", b"\n"), b"\n\n", raw[nl + width:]
    else:
        head, sep, body = raw[start:].replace(b"\r\n", b"\n"), b"", b""
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        m = _HEADER_NAME.match(line)
        skipping = bool(m and m.group(1).lower() in TRACE_HEADERS)
        if not skipping:
            kept.append(line)
    return hashlib.sha256(b"\n".join(kept) + sep + body.replace(b"\r\n", b"\n")).hexdigest()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixtures_hash_as_before(path: Path) -> None:
    raw = path.read_bytes()
    for variant in (raw, raw.replace(b"\r\n", b"\n"),
                    b"Received: from mx by x\r\n\tfor <a@b>\r\nDelivered-To: a@b\r\n" + raw,
                    b"From a@b Sun Nov 22\n" + raw.replace(b"\r\n", b"\n")):
        assert content_hash(variant) == _reference(variant)


_LINES = [b"Received: x", b"received :y", b"RECEIVED\t: z", b"Received-SPF: pass",
          b"X-Received: x", b"Return-Path: <a@b>", b"Delivered-To: a@b", b"x-original-to:a",
          b"X-Envelope-From: a", b"x-envelope-to: b", b"X-Spam-Status: No",
          b"X-Spam-Checker-Version: 1", b"X-Virus-Scanned: yes", b" folded", b"\tfolded",
          b"Subject: Received: inside", b"garbage line", b"", b"\r", b"From x", b":x",
          b"Received", b"Received x: y", b"Subject: a\rb", b"To: a@b"]


@settings(max_examples=1500, deadline=None)
@given(lines=st.lists(st.sampled_from(_LINES), max_size=10),
       nl=st.sampled_from([b"\r\n", b"\n", b"\r"]),
       tail=st.sampled_from([b"", b"\r\n", b"\n", b"\r\n\r\nbody\r\n", b"\n\nbody\r\n",
                             b"\n\r\nbody", b"\r\r\n\nx"]),
       mbox=st.booleans())
def test_generated_headers_hash_as_before(lines: list[bytes], nl: bytes, tail: bytes,
                                          mbox: bool) -> None:
    raw = (b"From a@b x" + nl if mbox else b"") + nl.join(lines) + tail
    assert content_hash(raw) == _reference(raw)


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=200))
def test_random_bytes_hash_as_before(raw: bytes) -> None:
    assert content_hash(raw) == _reference(raw)
