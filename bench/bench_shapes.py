"""Parse time per MB for hostile message shapes, at two sizes: is it linear?

Each shape is built at `--small` and `--big` bytes (default 2 MB and 25 MB) and parsed
by `parse_message` (median of `--rounds`). A shape whose seconds per MB at the big size
exceed twice those at the small size is reported as not linear, and the run fails.

    .venv/bin/python -m bench shapes [--small=BYTES] [--big=BYTES] [--rounds=N]
"""

from __future__ import annotations

import base64
import random
import statistics
import time
from collections.abc import Callable

from bench import int_option
from gateway.mail.parse import parse_message

HEAD = (b"From: Sender <s@customer.example>\r\nTo: support@helpdesk.example\r\n"
        b"Message-ID: <shape@customer.example>\r\nMIME-Version: 1.0\r\n")


def _repeat(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


def encoded_subject(size: int) -> bytes:
    """One Subject folded over many lines, every word encoded (RFC 2047)."""
    return HEAD + b"Subject: " + _repeat(b"=?utf-8?q?ab=C3=A9?=\r\n ", size) + b"x\r\n\r\nhi\r\n"


def encoded_unstructured(size: int) -> bytes:
    """A few huge unknown headers made of encoded words."""
    words = _repeat(b"=?iso-8859-1?b?4+k=?=\r\n ", size // 4)
    return HEAD + b"".join(b"X-Note-%d: " % i + words + b"x\r\n" for i in range(4)) + b"\r\nhi\r\n"


def many_headers(size: int) -> bytes:
    """Hundreds of thousands of short header fields."""
    return HEAD + _repeat(b"X-Tag: =?utf-8?q?caf=C3=A9?=\r\n", size) + b"Subject: s\r\n\r\nhi\r\n"


def many_recipients(size: int) -> bytes:
    """A To header with tens of thousands of named addresses."""
    unit = b'"=?utf-8?q?J=C3=B6rg?= Person" <person@partner.example>,\r\n '
    return HEAD.replace(b"To: support@helpdesk.example\r\n", b"") + b"To: " + _repeat(
        unit, size) + b"support@helpdesk.example\r\nSubject: s\r\n\r\nhi\r\n"


def long_references(size: int) -> bytes:
    """A References header with a huge number of Message-IDs."""
    return HEAD + b"Subject: Re: s\r\nReferences: " + _repeat(
        b"<0123456789abcdef@mail.customer.example>\r\n ", size) + b"<last@x>\r\n\r\nhi\r\n"


def many_parts(size: int) -> bytes:
    """multipart/mixed with tens of thousands of tiny parts."""
    part = (b"--B\r\nContent-Type: text/plain; name=a.txt\r\n"
            b"Content-Disposition: attachment\r\n\r\nx\r\n")
    return (HEAD + b"Subject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            + _repeat(part, size) + b"--B--\r\n")


def nested_parts(size: int) -> bytes:
    """Multiparts nested as deep as the size allows, a small text at the bottom."""
    depth = min(size // 80, 5000)
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                       for i in range(depth))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth + 1)))
    body = (b"--b%d\r\nContent-Type: text/plain\r\n\r\n" % depth
            + _repeat(b"text line\r\n", size // 2))
    return (HEAD + b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
            + opening + body + closing)


def one_long_line(size: int) -> bytes:
    """A text body without a single line break."""
    return HEAD + b"Subject: s\r\n\r\n" + _repeat(b"word ", size) + b"\r\n"


def html_body(size: int) -> bytes:
    """An HTML-only body of deeply repeated markup (text made from it)."""
    return (HEAD + b"Subject: s\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>"
            + _repeat(b"<div><p>caf\xc3\xa9 <b>x</b> &amp; <a href='http://x'>y</a></p></div>\r\n",
                      size) + b"</body></html>\r\n")


def qp_body(size: int) -> bytes:
    """A quoted-printable body made almost only of escapes and soft breaks."""
    return (HEAD + b"Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            + _repeat(b"=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=\r\n", size))


def base64_attachment(size: int) -> bytes:
    """The ordinary big message: one base64 attachment."""
    data = base64.encodebytes(random.Random(1).randbytes(size * 3 // 4)).replace(b"\n", b"\r\n")
    return (HEAD + b"Subject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
            b"Content-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: "
            b"application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + data + b"--B--\r\n")


SHAPES: dict[str, Callable[[int], bytes]] = {
    f.__name__: f for f in (
        encoded_subject, encoded_unstructured, many_headers, many_recipients, long_references,
        many_parts, nested_parts, one_long_line, html_body, qp_body, base64_attachment)
}


def seconds_per_mb(shape: Callable[[int], bytes], size: int, rounds: int) -> float:
    raw = shape(size)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        parse_message(raw)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / (len(raw) / 1e6)


def main(argv: list[str]) -> int:
    small = int_option(argv, "small", 2_000_000)
    big = int_option(argv, "big", 25_000_000)
    rounds = int_option(argv, "rounds", 3)
    print(f"{'shape':22} {'s/MB @' + str(small // 1000) + 'k':>12} "
          f"{'s/MB @' + str(big // 1000) + 'k':>12}  ratio")
    status = 0
    for name, shape in SHAPES.items():
        at_small = seconds_per_mb(shape, small, rounds)
        at_big = seconds_per_mb(shape, big, max(1, rounds // 2))
        ratio = at_big / at_small
        verdict = "linear" if ratio < 2 else "NOT LINEAR"
        status |= ratio >= 2
        print(f"{name:22} {at_small:12.3f} {at_big:12.3f}  {ratio:5.2f} {verdict}", flush=True)
    return int(status)
