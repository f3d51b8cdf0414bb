"""Study: does the search score predict how selective the baked adapter becomes?

For each target domain, several candidate directions (the search's choice and others chosen to spread
the objectives: layers and positions) are baked with :func:`palette_lens.bake.train.bake` (default settings,
fewer steps to keep the study affordable) and the baked model is measured on the **test** split with
first-token scores (no generation): refusal-token mass on the target domain relative to vanilla, the same
on every other harmful domain (retention), and harmless KL. The bake's own selectivity formula
(:func:`palette_lens.bake.train.validation_metrics`) turns these into one number. Rank correlations between
each search objective and post-bake selectivity are written to ``benchmarks/results/search_bake_study.json``.

Each picked candidate (the search's choice plus a grid of layers at the last post-instruction position) is
scored under both interventions the search offers: the bake's one-block edit (``bypass_T``, ``retain_N``,
``kl_H``) and all-layer ablation (``ablate_*``), plus separability ``sep_N``.

Usage: ``python benchmarks/study_search_bake.py --targets cyber violence [--layers 6 9 12 14 16 18]``.
Expect ~1–2 minutes per bake on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from palette_lens.adapters.apply import adapters_applied
from palette_lens.bake.config import BakeConfig
from palette_lens.bake.examples import validation_metrics
from palette_lens.bake.train import bake_direction
from palette_lens.data.prompts import load_prompts
from palette_lens.data.records import BORDERLINE, HARMLESS  # noqa: E402
from palette_lens.models.blocks import capture_block_inputs  # noqa: E402
from palette_lens.models.loading import load_model  # noqa: E402
from palette_lens.refusal.prefix_scorer import PrefixScorer
from palette_lens.search.candidates import collect_domain_residuals  # noqa: E402
from palette_lens.search.direction_search import search_direction  # noqa: E402
from palette_lens.search.objectives import ablation_objectives, build_eval_set, edit_objectives

EDIT = ("bypass_T", "retain_N", "retain_min", "kl_H")
OBJ = (*EDIT, *(f"ablate_{k}" for k in EDIT), "sep_N", "rel_norm")


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 3:
        return float("nan")
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1])


def pick_candidates(result, layers: list[int], position: int = -1) -> list[tuple[int, int]]:
    """The search's choice, then a grid of layers at one post-instruction position (spreads the objectives)."""
    picks = [(result.chosen.layer, result.chosen.position)] + [(l, position) for l in layers]
    return list(dict.fromkeys(picks))


def test_metrics(model, prompts, target, adapter, refusal_ids, per_domain: int) -> dict:
    """First-token metrics of the baked model against vanilla on the test split."""
    groups: dict[str, slice] = {}
    texts: list[str] = []
    for d in [target, *[x for x in prompts.harmful_domains if x != target], HARMLESS, BORDERLINE]:
        if d not in prompts.by_domain:
            continue
        ps = prompts.part(d, "test", per_domain * (2 if d in (HARMLESS, BORDERLINE) else 1))
        name = "target" if d == target else d
        groups[name] = slice(len(texts), len(texts) + len(ps))
        texts += ps
    scorer = PrefixScorer(model, texts, batch_size=32)
    base = scorer.logprobs()
    with adapters_applied(model, [adapter]):
        lp = scorer.logprobs()
    return validation_metrics(lp, base, groups, refusal_ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["cyber", "hate"])
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, 14, 16, 18], help="layers baked per target")
    ap.add_argument("--steps", type=int, default=None, help="bake steps (default: the bake's default)")
    ap.add_argument("--test-per-domain", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "search_bake_study.json"))
    args = ap.parse_args()

    model = load_model()
    prompts = load_prompts()
    t0 = time.perf_counter()
    residuals = collect_domain_residuals(model, prompts)
    log = {"residuals_s": round(time.perf_counter() - t0, 1), "targets": {}, "bakes": []}
    cfg = BakeConfig(steps=args.steps) if args.steps else BakeConfig()
    captured: dict[int, object] = {}
    out_path = Path(args.out)
    for target in args.targets:
        t0 = time.perf_counter()
        result = search_direction(model, prompts, target, residuals=residuals, progress=False)
        log["targets"][target] = {"search_s": round(time.perf_counter() - t0, 1), "chosen": [result.chosen.layer, result.chosen.position]}
        picks = pick_candidates(result, args.layers)
        rows = {(c["layer"], c["position"]): c for c in result.candidates}
        others = [d for d in prompts.harmful_domains if d != target]
        cf = result.config
        es = build_eval_set(
            model, prompts.part(target, "val")[: cf.n_val], {d: prompts.part(d, "val")[: cf.n_val_other] for d in others},
            prompts.part(HARMLESS, "val")[: cf.n_val], result.refusal_ids, cf.batch_size,
        )
        for layer, pos in picks:
            row = dict(rows[(layer, pos)])
            vec = result.candidate_set.vector(layer, pos)
            unit = vec / vec.norm()
            row.update(edit_objectives(model, es, unit, layer, cf.edit_scale))  # both interventions, every pick
            row.update({f"ablate_{k}": v for k, v in ablation_objectives(model, es, unit).items()})
            direction = result.direction(layer, pos)
            t1 = time.perf_counter()
            if layer - 1 not in captured:
                # one capture per layer serves every target (all train + val prompts of every group)
                needed = [p for d in prompts.domains for part in ("train", "val") for p in prompts.part(d, part)]
                captured[layer - 1] = capture_block_inputs(model, needed, layer - 1)
            baked = bake_direction(model, direction, prompts, cfg, refusal_ids=result.refusal_ids,
                         inputs=captured[layer - 1], progress=False)
            bake_s = time.perf_counter() - t1
            test = test_metrics(model, prompts, target, baked.adapter, result.refusal_ids, args.test_per_domain)
            entry = {
                "target": target, "layer": layer, "position": pos, "chosen": (layer, pos) == (result.chosen.layer, result.chosen.position),
                "search": {k: row.get(k) for k in OBJ},
                "bake_val": {k: baked.val.get(k) for k in ("p_target", "p_target_base", "retain_mean", "retain_min", "kl_harmless", "selectivity")},
                "test": {k: test.get(k) for k in ("p_target", "p_target_base", "retain_mean", "retain_min", "kl_harmless", "borderline_up", "selectivity")},
                "test_retain": test.get("retain"),
                "bake_s": round(bake_s, 1),
            }
            log["bakes"].append(entry)
            sys.stdout.write(json.dumps(entry) + "\n")
            sys.stdout.flush()
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(log, indent=1))
    # correlations of search objectives with post-bake (test) selectivity, pooled over targets
    sel = [b["test"]["selectivity"] for b in log["bakes"]]
    log["spearman_vs_test_selectivity"] = {k: spearman([b["search"][k] for b in log["bakes"]], sel) for k in OBJ}
    for part in ("retain_mean", "p_target"):
        vals = [b["test"][part] for b in log["bakes"]]
        log[f"spearman_vs_test_{part}"] = {k: spearman([b["search"][k] for b in log["bakes"]], vals) for k in OBJ}
    out_path.write_text(json.dumps(log, indent=1))
    sys.stdout.write(json.dumps(log["spearman_vs_test_selectivity"], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
