"""Benchmarks (`make bench`). Each `bench_*.py` module has `main(argv) -> int`.

Machines here are shared and noisy: every benchmark measures its own baseline in the
same run and reports ratios against it, never absolute pass/fail timings.
"""

from __future__ import annotations


def int_option(argv: list[str], name: str, default: int) -> int:
    """`--name=N` from a benchmark's argv, else `default`."""
    for a in argv:
        if a.startswith(f"--{name}="):
            return int(a.split("=", 1)[1])
    return default
