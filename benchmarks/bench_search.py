"""Benchmark: full direction search for one domain vs a naive exhaustive evaluation of every candidate.

Both run side by side in one process on the same validation prompts:

- **search**: :func:`palette_lens.search.direction_search.search_direction` with its defaults (attribution + separability
  pruning to ``top_k`` candidates, prefix-cached batched scoring, vanilla log-probs computed once);
- **naive**: every candidate (all layers × post-instruction positions) ablated and scored with a plain
  batched forward pass per candidate (:meth:`ChatModel.last_logits`, no pruning, no prefix cache), the
  vanilla pass included. Timing all of them would take most of an hour on a shared 2-core machine, so
  ``--naive-sample`` candidates (spread over layers and positions) are timed and the total is
  extrapolated linearly (per-candidate cost × number of candidates); the output says so.

The naive sample also measures how well the pruning proxy ranks candidates (Spearman correlation of the
attribution estimate with the true ``bypass_T``) and whether the naive optimum would have been kept.

Usage: ``python benchmarks/bench_search.py [--target cyber] [--naive-sample 8]``; writes
``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from palette_lens.data.prompts import load_prompts
from palette_lens.data.records import HARMLESS  # noqa: E402
from palette_lens.models.hooks import ablation_hooks  # noqa: E402
from palette_lens.models.loading import load_model  # noqa: E402
from palette_lens.search.candidates import collect_domain_residuals  # noqa: E402
from palette_lens.search.direction_search import search_direction
from palette_lens.search.objectives import objectives_from_logprobs  # noqa: E402
from palette_lens.search.result import SearchConfig


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cyber")
    ap.add_argument("--naive-sample", type=int, default=8, help="candidates timed by the naive method")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "search.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = load_model()
    prompts = load_prompts()
    load_s = time.perf_counter() - t0
    cfg = SearchConfig()
    domains = [*prompts.harmful_domains, HARMLESS]

    t0 = time.perf_counter()
    residuals = collect_domain_residuals(model, prompts, domains, limit=cfg.n_train)
    residuals_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = search_direction(model, prompts, args.target, residuals=residuals, config=cfg, progress=False)
    search_s = time.perf_counter() - t0

    # ---- naive: same validation prompts, plain forward per candidate, every candidate
    from palette_lens.search.objectives import build_eval_set

    others = [d for d in prompts.harmful_domains if d != args.target]
    es = build_eval_set(
        model,
        prompts.part(args.target, "val")[: cfg.n_val],
        {d: prompts.part(d, "val")[: cfg.n_val_other] for d in others},
        prompts.part(HARMLESS, "val")[: cfg.n_val],
        result.refusal_ids,
    )
    cands = result.candidate_set
    keys = list(cands.keys())
    n_all = len(keys)
    t0 = time.perf_counter()
    model.last_logits(es.prompts, batch_size=cfg.batch_size)  # the naive vanilla pass
    naive_vanilla_s = time.perf_counter() - t0
    eligible = [k for k, c in zip(keys, result.candidates) if c["eligible"]]
    pick = [eligible[int(i)] for i in np.linspace(0, len(eligible) - 1, args.naive_sample).round()]
    sample = []
    t0 = time.perf_counter()
    for layer, pos in pick:
        lp = model.last_logits(es.prompts, hooks=ablation_hooks(model, cands.vector(layer, pos)), batch_size=cfg.batch_size)
        sample.append({"layer": layer, "position": pos, **objectives_from_logprobs(es, lp)})
    naive_per_candidate_s = (time.perf_counter() - t0) / len(pick)
    naive_total_s = naive_vanilla_s + naive_per_candidate_s * n_all

    rows = {(c["layer"], c["position"]): c for c in result.candidates}
    proxy = [rows[(s["layer"], s["position"])]["proxy"] for s in sample]
    truth = [s["bypass_T"] for s in sample]
    evaluated = [c for c in result.candidates if c["evaluated"]]
    proxy_rho_evaluated = spearman([c["proxy"] for c in evaluated], [c["bypass_T"] for c in evaluated])
    ch = result.chosen_row
    out = {
        "target": args.target,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "model_load_s": round(load_s, 2),
        "residuals_all_domains_s": round(residuals_s, 2),
        "residual_prompts": {d: len(r) for d, r in residuals.items()},
        "search_s": round(search_s, 2),
        "search_stages_s": result.timings_s,
        "search_plus_residuals_s": round(search_s + residuals_s, 2),
        "n_candidates": n_all,
        "n_eligible": len(eligible),
        "n_scored_causally": len(evaluated),
        "validation_prompts": len(es.prompts),
        "naive": {
            "method": "every candidate ablated and scored with a plain batched forward (no pruning, no prefix cache)",
            "timed_candidates": len(pick),
            "extrapolated": True,
            "vanilla_s": round(naive_vanilla_s, 2),
            "per_candidate_s": round(naive_per_candidate_s, 2),
            "total_s_extrapolated": round(naive_total_s, 1),
        },
        "speedup_naive_over_search": round(naive_total_s / search_s, 2),
        "proxy_spearman_vs_bypass": {"naive_sample": round(spearman(proxy, truth), 3),
                                     "scored_candidates": round(proxy_rho_evaluated, 3)},
        "naive_sample": sample,
        "chosen": {k: ch.get(k) for k in ("layer", "position", "bypass_T", "retain_N", "sep_N", "kl_H")},
        "vanilla": result.vanilla,
        "best_naive_sample_bypass": min(truth),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    sys.stdout.write(
        f"search ({len(evaluated)} of {n_all} candidates scored): {search_s:.1f} s "
        f"(+ {residuals_s:.1f} s residuals of {len(domains)} domains, shared across searches)\n"
        f"naive exhaustive ({n_all} candidates, {len(pick)} timed, extrapolated): {naive_total_s:.0f} s\n"
        f"ratio naive / search: {naive_total_s / search_s:.1f}x\n"
        f"proxy Spearman vs bypass_T: {out['proxy_spearman_vs_bypass']}\n"
        f"written: {args.out}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
