"""Parsing CPU and memory_check, against the stdlib parser and mail-parser in the same run.

CPU: median time per message of `parse_message` on a ~4 KB message and on the fixture
corpus (tests/fixtures/mail), next to `email.message_from_bytes` alone (the floor every
path pays) and `mailparser.parse_from_bytes` (mail-parser's full parse, for reference:
`parse_message` ran it on every message until Nov 2026).

Memory: Python-level peak (tracemalloc) of `parse_message` on a 25 MB message with a
base64 attachment, next to `email.message_from_bytes` on the same bytes. With
`--server`, also the real figure issue 3 sets a target for: peak RSS of a fresh
`ticketgate serve` receiving that message, above idle (bench_lmtp's measurement).

    .venv/bin/python -m bench parse [--quick] [--server] [--big=BYTES]
"""

from __future__ import annotations

import email
import logging
import random
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import mailparser

from bench import int_option
from bench.bench_lmtp import big_message, memory_check, new_message
from gateway.mail.parse import parse_message

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mail"
# mail-parser warns about every part type it does not render ("mixed not handled").
logging.getLogger("mailparser").setLevel(logging.ERROR)


def _per_message_ms(fn: Callable[[bytes], object], messages: list[bytes], rounds: int) -> float:
    for raw in messages[:20]:
        fn(raw)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in messages:
            fn(raw)
        times.append((time.perf_counter() - start) / len(messages) * 1e3)
    return statistics.median(times)


def _peak(fn: Callable[[bytes], object], raw: bytes) -> int:
    tracemalloc.start()
    try:
        fn(raw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    rounds = 3 if quick else 7
    report: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    small = [new_message(i, random.Random(i)) for i in range(50 if quick else 200)]
    corpus = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))] * (2 if quick else 5)
    contenders: list[tuple[str, Callable[[bytes], object]]] = [
        ("email.message_from_bytes (floor)", email.message_from_bytes),
        ("mailparser.parse_from_bytes (full)", mailparser.parse_from_bytes),
        ("parse_message", parse_message),
    ]
    for label, messages in ((f"~{len(small[0])} B message", small),
                            (f"fixture corpus ({len(corpus)} parses)", corpus)):
        floor = 0.0
        for name, fn in contenders:
            ms = _per_message_ms(fn, messages, rounds)
            floor = floor or ms
            report(f"{label}: {name:36s} {ms:6.3f} ms/message ({ms / floor:.1f}x the floor)")

    status = 0
    size = int_option(argv, "big", 25_000_000)
    raw = big_message(size)
    stdlib_peak = _peak(email.message_from_bytes, raw)
    ours = _peak(parse_message, raw)
    report(f"{len(raw) / 1e6:.1f} MB message, Python-level peak: email.message_from_bytes "
           f"{stdlib_peak / 1e6:.0f} MB ({stdlib_peak / len(raw):.2f}x), parse_message "
           f"{ours / 1e6:.0f} MB ({ours / len(raw):.2f}x)")
    if "--server" in argv:
        work = Path(tempfile.mkdtemp(prefix="bench-parse-"))
        try:
            ok, line = memory_check(work, size)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        status |= 0 if ok else 1
        report(f"ticketgate serve, {line}")
    return status
