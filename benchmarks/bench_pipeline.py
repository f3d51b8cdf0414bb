"""Pipeline benchmark: wall time of ``palette-lens demo`` (and ``demo --quick``) by stage, and peak memory.

Run: .venv/bin/python benchmarks/bench_pipeline.py [--modes quick full] [--keep DIR]
Each mode runs ``palette-lens demo`` in its own process (so its peak resident memory is its own, read from
``wait4``'s rusage); the stage timings come from the run's ``metrics.json``. Also recorded: the latency
ratios measured side by side inside the run (merged profile / vanilla, hooked steering / vanilla), the
machine's load average before and after (the timings are only comparable on an otherwise idle machine),
and the generated-token counts per variant. Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_mode(mode: str, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "palette_lens.cli.app", "demo", "--out", str(out), "--no-cache", *extra]
    if mode == "quick":
        cmd.append("--quick")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    log_path = out.parent / f"{out.name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    result: dict = {
        "command": " ".join(cmd[1:]),
        "exit_code": code,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # Linux: KiB
        "cpu_user_s": round(usage.ru_utime, 1),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "log": str(log_path),
    }
    if code != 0:
        result["error_tail"] = log_path.read_text()[-2000:]
        return result
    metrics = json.loads((out / "metrics.json").read_text())
    details = json.loads((out / "details.json").read_text())
    lat = metrics["latency_ms_per_token"]
    result.update(
        timings_s=metrics["timings_s"],
        latency_ms_per_token=lat,
        latency_ratio={"merged": lat["merged"] / lat["vanilla"], "hooked": lat["hooked"] / lat["vanilla"]},
        latency_runs_ms=details["latency"]["runs_ms"],
        evaluated_n=details["evaluated_n"],
        generated_tokens={k: v["generated_tokens"] for k, v in details["variants"].items()},
        generation_seconds={k: round(v["seconds"], 1) for k, v in details["variants"].items()},
        floors_ok={k: v["ok"] for k, v in details["floors"].items()},
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", nargs="+", default=["quick"], choices=["quick", "full"])
    parser.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--model", default=None, help="passed to demo --model")
    args = parser.parse_args()
    extra = ["--model", args.model] if args.model else []

    import torch

    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "modes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        for mode in args.modes:
            res = run_mode(mode, base / f"demo-{mode}", extra)
            results["modes"][mode] = res
            print(f"{mode}: exit {res['exit_code']}, wall {res['wall_s']:.0f} s, peak RSS {res['peak_rss_gib']:.2f} GiB")
            for stage, s in res.get("timings_s", {}).items():
                print(f"  {stage:<12} {s:8.1f} s")
            if "latency_ratio" in res:
                r = res["latency_ratio"]
                print(f"  latency merged/vanilla x{r['merged']:.3f}, hooked/vanilla x{r['hooked']:.3f}")
    out = ROOT / "benchmarks" / "results" / "pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous.setdefault("modes", {}).update(results.pop("modes"))
    previous.update(results)
    out.write_text(json.dumps(previous, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
