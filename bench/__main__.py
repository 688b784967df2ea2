"""`python -m bench [NAME ...]`: run the named benchmarks (default: all bench_*.py)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    available = sorted(
        m.name.removeprefix("bench_") for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )
    names = [a for a in argv if not a.startswith("-")] or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 64
    status = 0
    for name in names:
        print(f"=== {name}", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        status |= int(module.main([a for a in argv if a.startswith("-")]) or 0)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
