"""Run every benchmark one after another and print where their results went (``make bench``).

Each script measures its ratios side by side in one run and writes ``benchmarks/results/<name>.json``.
Timings are only comparable on an otherwise idle machine: each script records the load average.

Usage: ``python benchmarks/run_all.py [--only foundation search bake pipeline first_answer] [--full]``
(``--full`` also times the full ``palette-lens demo``, about half an hour; by default only ``--quick``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "foundation": ["bench_foundation.py", "--cold"],
    "search": ["bench_search.py"],
    "bake": ["bench_bake.py"],
    "pipeline": ["bench_pipeline.py", "--modes", "quick"],
    "first_answer": ["bench_first_answer.py"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(SCRIPTS), default=list(SCRIPTS))
    ap.add_argument("--full", action="store_true", help="also time the full demo (pipeline benchmark)")
    args = ap.parse_args(argv)
    failed = []
    for name in args.only:
        cmd = [sys.executable, str(HERE / SCRIPTS[name][0]), *SCRIPTS[name][1:]]
        if name == "pipeline" and args.full:
            cmd += ["full"]
        t0 = time.perf_counter()
        sys.stderr.write(f"bench: {name} ...\n")
        code = subprocess.call(cmd)
        sys.stderr.write(f"bench: {name} {'ok' if code == 0 else f'FAILED ({code})'} in {time.perf_counter() - t0:.0f} s\n")
        if code:
            failed.append(name)
    sys.stderr.write(f"bench: results in {HERE / 'results'}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
