"""Evaluation benchmark: the generation shortcuts against plain generation, side by side in one process.

Run: .venv/bin/python benchmarks/bench_evaluate.py --from RUN_DIR [--limit 12] [--profile cyber ...]

``RUN_DIR`` is a finished ``palette-lens demo`` / ``run`` folder (its ``adapters/<domain>/``). For each
setting, vanilla generation and every profile (each single adapter, then all of them merged) are evaluated
on the same test prompts (``--limit`` per harmful domain, twice that many harmless, ``--limit`` borderline),
with the vanilla generations computed fresh (no disk cache):

- ``plain``: generate every prompt token by token (no drafts, no early stop);
- ``drafts``: check vanilla's completions as drafts where the profile is not meant to change anything;
- ``drafts+prefix``: the same, running only the layers above the profile's adapted block;
- ``defaults``: the shipped settings (drafts, prefix reuse, stop once the judge's verdict is final).

Reported per setting: seconds per variant and in total, the ratio to ``plain``, and whether every refusal
verdict equals ``plain``'s (the shortcuts must not change the numbers). Writes
benchmarks/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "plain": {"use_drafts": False, "reuse_prefix": False, "stop_on_refusal": False, "stop_when_judged": False},
    "drafts": {"use_drafts": True, "reuse_prefix": False, "stop_on_refusal": True, "stop_when_judged": False},
    "drafts+prefix": {"use_drafts": True, "reuse_prefix": True, "stop_on_refusal": True, "stop_when_judged": False},
    "defaults": {},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="run_dir", required=True, help="a finished demo/run folder with adapters/")
    ap.add_argument("--limit", type=int, default=12, help="test prompts per harmful domain")
    ap.add_argument("--profile", action="append", help="single-domain profiles (default: every adapter)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evaluate.json"))
    args = ap.parse_args()

    import torch

    from palette_lens.adapters.baked import load_adapter
    from palette_lens.compose.profiles import Profile, merged_profile, profile_adapters
    from palette_lens.data.prompts import load_prompts
    from palette_lens.evaluate.evaluator import EvalConfig, Evaluator
    from palette_lens.evaluate.results import EvalSet
    from palette_lens.models.loading import load_model
    from palette_lens.refusal.judge import is_refusal

    model = load_model()
    prompts = load_prompts()
    domains = args.profile or sorted(p.name for p in (Path(args.run_dir) / "adapters").iterdir() if p.is_dir())
    adapters = {d: load_adapter(Path(args.run_dir) / "adapters" / d, model) for d in domains}
    profiles = [[d] for d in domains] + ([domains] if len(domains) > 1 else [])
    evalset = EvalSet.build(prompts, None, "test", args.limit)
    lms = {"+".join(p): merged_profile(model, profile_adapters(Profile(tuple(p)), adapters)) for p in profiles}
    auth = {"+".join(p): p for p in profiles}
    load_before = os.getloadavg()

    results: dict = {}
    verdicts: dict[str, dict[str, list[bool]]] = {}
    for setting in args.settings:
        config = replace(EvalConfig(), **SETTINGS[setting])
        ev = Evaluator(model, evalset, config, cache=False)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        van = ev.vanilla()
        seconds["vanilla"] = time.perf_counter() - t0
        verdicts[setting] = {"vanilla": [is_refusal(t) for d in evalset.domains for t in van.texts[d]]}
        tokens = {"vanilla": van.n_generated}
        for name, lm in lms.items():
            t0 = time.perf_counter()
            res = ev.evaluate_lm(name, lm, auth[name])
            seconds[name] = time.perf_counter() - t0
            verdicts[setting][name] = [is_refusal(t) for d in evalset.domains for t in res.texts[d]]
            tokens[name] = res.n_generated
        results[setting] = {
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "total_s": round(sum(seconds.values()), 1),
            "generated_tokens": tokens,
        }
        print(setting, json.dumps(results[setting]), flush=True)
        del ev

    base = args.settings[0]
    for setting in args.settings:
        results[setting]["ratio_to_" + base] = round(results[setting]["total_s"] / results[base]["total_s"], 3)
        diff = {
            name: sum(a != b for a, b in zip(v, verdicts[base][name])) for name, v in verdicts[setting].items()
        }
        results[setting]["verdicts_differing_from_" + base] = diff
    doc = {
        "run_dir": str(args.run_dir),
        "evaluated_n": {d: len(p) for d, p in evalset.prompts.items()},
        "profiles": list(lms),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({s: (r["total_s"], r.get("ratio_to_" + base)) for s, r in results.items()}))


if __name__ == "__main__":
    main()
