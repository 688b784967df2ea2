"""The DATA reader and the MAIL/RCPT address parser against reference behaviour.

`_read_data` reads up to each ".\\r\\n" instead of line by line, and `_getaddr` takes a
regex shortcut for plain paths; both must give exactly what the line-by-line reader
(RFC 5321 4.5.2) and aiosmtpd's own parser give, however the bytes arrive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.server.protocol import IntakeSMTP, _ClientGone

LIMIT = 1 << 16  # the reader's buffer limit, as on a real session


def _reference(stream: bytes) -> tuple[bytes, bytes]:
    """(message, what follows the terminator), decoded line by line."""
    out = bytearray()
    pos = 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line = stream[pos:end]
        pos = end
        if line == b".\r\n":
            return bytes(out), stream[pos:]
        out += line[1:] if line[:1] == b"." else line


def _session(reader: asyncio.StreamReader) -> Any:
    proto = IntakeSMTP.__new__(IntakeSMTP)
    proto._reader = reader
    return proto


def _read(stream: bytes, cuts: list[int], limit: int = 0) -> tuple[Any, bytes]:
    async def run() -> tuple[Any, bytes]:
        reader = asyncio.StreamReader(limit=LIMIT)
        result = asyncio.ensure_future(_session(reader)._read_data(limit))
        last = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            reader.feed_data(stream[last:cut])
            last = cut
            await asyncio.sleep(0)
        reader.feed_eof()
        got = await result
        return got, await reader.read()

    return asyncio.run(run())


LINES = st.lists(st.sampled_from([
    b"", b".", b"..", b"...", b"x.", b"a.b", b".x", b"..x", b"\r", b"\n", b"a\nb.",
    b"Subject: hi", b"L" * 70000, b"." * 5, b"end.",
]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(LINES, st.lists(st.integers(0, 80000), max_size=6), st.binary(max_size=8))
def test_any_message_in_any_chunks_reads_as_line_by_line(
    lines: list[bytes], cuts: list[int], after: bytes,
) -> None:
    stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    stream = stuffed + b".\r\n" + after
    (raw, size), rest = _read(stream, [c for c in cuts if c < len(stream)])
    expected, expected_rest = _reference(stream)
    assert raw == expected
    assert size == len(stuffed)
    assert rest == expected_rest == after, "nothing after the terminator may be consumed"


def test_an_empty_message_and_a_message_of_one_dot_line() -> None:
    assert _read(b".\r\n", [])[0] == (b"", 0)
    assert _read(b"..\r\n.\r\n", [1, 2, 3, 4])[0] == (b".\r\n", 4)


def test_dot_crlf_inside_a_line_does_not_end_the_message() -> None:
    stream = b"Thanks.\r\nx.\r\n..\r\n.\r\n"
    assert _read(stream, [5, 8, 9, 14])[0][0] == b"Thanks.\r\nx.\r\n.\r\n"


def test_over_the_limit_reads_to_the_end_and_returns_only_the_size() -> None:
    stream = b"a" * 100 + b"\r\n.\r\nNEXT"
    got, rest = _read(stream, [50], limit=64)
    assert got == (None, 102) and rest == b"NEXT"


def test_a_client_that_goes_away_in_data_is_reported() -> None:
    try:
        _read(b"From: a\r\nhalf a mess", [])
    except _ClientGone:
        return
    raise AssertionError("expected _ClientGone")


ADDRESSES = ["<a@b>", "<a@b> SIZE=5", "<a.b+c@d.e>  BODY=8BITMIME", "<a..b@c>", "<.a@b>",
             "<a@b", "<>", " <a@b>", "<a@b>x", '<"q x"@b>', "<a@[1.2.3.4]>", "<a@b.>",
             "<a@b> ", "<ä@b>", "<a@b>\tX", "<a(c)@b>", "<a@b> (c) SIZE=1", "<a@b>(c)",
             "<" + "x" * 70 + "@b>", "<a@b> \t SIZE=1 BODY=7BIT", "a@b", "", "<@a,@b:c@d>"]


class _Handler:
    pass


def _stock() -> SMTP:
    """aiosmtpd's session class; given a loop, or it makes one nobody closes."""
    loop = asyncio.new_event_loop()
    loop.close()  # only stored, never run
    return SMTP(_Handler(), loop=loop)


def _outcome(proto: Any, arg: str) -> object:
    """The result, or the exception type: aiosmtpd's parser raises on some input ("<")."""
    try:
        return proto._getaddr(arg)
    except Exception as exc:
        return type(exc)


def test_the_address_shortcut_agrees_with_aiosmtpd() -> None:
    stock = _stock()
    ours = IntakeSMTP.__new__(IntakeSMTP)
    for limit in (0, 64):
        stock.local_part_limit = ours.local_part_limit = limit
        for arg in ADDRESSES:
            assert _outcome(ours, arg) == _outcome(stock, arg), arg


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.@<>+ \t()\"[]-_x", max_size=20))
def test_the_address_shortcut_agrees_with_aiosmtpd_on_any_input(arg: str) -> None:
    stock = _stock()
    ours = IntakeSMTP.__new__(IntakeSMTP)
    stock.local_part_limit = ours.local_part_limit = 0
    assert _outcome(ours, arg) == _outcome(stock, arg)
