"""Benchmarks (`make bench`). Each `bench_*.py` module has `main(argv) -> int`.

Machines here are shared and noisy: every benchmark measures its own baseline in the
same run and reports ratios against it, never absolute pass/fail timings.
"""
