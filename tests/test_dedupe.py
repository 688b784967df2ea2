"""content_hash: one message delivered twice hashes the same, whatever the MTAs added."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from gateway.config import ConfigError
from gateway.intake.core import Intake
from gateway.intake.dedupe import content_hash, ignored_fields
from gateway.mail.envelope import Envelope
from tests.support import make_config

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


# What each of two MX hosts (or their filters) adds to the same incoming message.
MX_A = (b"Received: from mail.sender.example by mx1.helpdesk.example\r\n"
        b"Received-SPF: pass (mx1: domain of sender.example designates 192.0.2.1)\r\n"
        b"Authentication-Results: mx1.helpdesk.example; dkim=pass header.d=sender.example;\r\n"
        b"\tspf=pass smtp.mailfrom=sender.example\r\n"
        b"ARC-Seal: i=1; a=rsa-sha256; d=helpdesk.example; s=a1; cv=none; b=AAAA\r\n"
        b"ARC-Message-Signature: i=1; d=helpdesk.example; b=BBBB\r\n"
        b"ARC-Authentication-Results: i=1; mx1.helpdesk.example; dkim=pass\r\n"
        b"X-Spam-Status: No, score=-0.1\r\nX-Spam-Score: -0.1\r\n"
        b"X-Virus-Scanned: amavisd-new at mx1\r\nX-Amavis-Alert: none\r\n"
        b"X-Rspamd-Queue-Id: 4F1A2\r\nX-Rspamd-Server: mx1\r\n")
MX_B = (b"Received: from mail.sender.example by mx2.helpdesk.example\r\n"
        b"Authentication-Results: mx2.helpdesk.example; dkim=pass header.d=sender.example\r\n"
        b"Received-SPF: pass (mx2: ...)\r\nARC-Seal: i=1; d=helpdesk.example; b=CCCC\r\n"
        b"X-Spam-Flag: NO\r\nX-Spam-Level: \r\nX-Virus-Status: Clean\r\n"
        b"X-Rspamd-Action: no action\r\nX-Greylist: delayed 31 seconds\r\n")


def test_the_same_message_through_two_mx_hosts_hashes_the_same() -> None:
    signed = b"DKIM-Signature: v=1; d=sender.example; b=ZZZZ\r\n" + BASE
    assert content_hash(MX_A + signed) == content_hash(MX_B + signed) == content_hash(signed)


@pytest.mark.parametrize("field", [
    b"Subject-Received: x\r\n", b"Received x: y\r\n", b"X-Note: Received: inside\r\n",
    b"DKIM-Signature: v=1; b=the sender's\r\n", b"X-Filter-Score: 3\r\n",
    b"ARC: not a prefix match\r\n",
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


def test_configured_headers_and_prefixes_are_ignored_too() -> None:
    ours = ignored_fields(("X-Filter-*", "X-Our-Mx"))
    added = b"X-Filter-Score: 3\r\nx-filter-verdict: ok\r\n\tmore\r\nX-Our-MX: mx2\r\n"
    assert content_hash(added + BASE, ours) == content_hash(BASE, ours) == content_hash(BASE)
    assert content_hash(added + BASE) != content_hash(BASE)  # not by default
    assert content_hash(b"X-Our-Mx-Id: 1\r\n" + BASE, ours) != content_hash(BASE)


def test_the_intake_hashes_with_the_configured_list(tmp_path: Path) -> None:
    config = make_config(tmp_path, "sqlite://", intake={"dedupe_ignore_headers": ["X-Mx-*"]})
    intake = Intake(config, sessionmaker())
    prepared = intake.prepare(b"X-Mx-Host: mx1\r\n" + BASE, Envelope(None, ()))
    assert prepared.content_hash == content_hash(BASE)


@pytest.mark.parametrize("bad", ["", "X Spam", "X-*-Score", "Received:", "**", "Wörd"])
def test_a_bad_configured_header_is_a_config_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"intake\.dedupe_ignore_headers\[0\]"):
        make_config(tmp_path, "sqlite://", intake={"dedupe_ignore_headers": [bad]})
