"""Bake one domain under several settings and measure each adapter side by side (the bake tables of docs/results.md and docs/decisions.md).

For each setting (a JSON object of :class:`palette_lens.bake.train.BakeConfig` overrides) the target's direction
(``--layer``, position −1, difference of means on all train prompts) is baked, then the merged single-domain
profile is generated on a test slice (``--n`` target prompts, ``--n-other`` per other domain, 24 harmless, 12
borderline) and on adversarial variants of ``--leak`` non-target requests per attack kind
(:func:`palette_lens.evaluate.leakage.measure_leakage`). One JSON line per setting on stdout.

Usage::

    .venv/bin/python scripts/bake_variants.py --target cyber \\
        '{"adversarial_negatives": [], "other_scale": 0, "mix": [1, 1, 1, 0.3]}' '{}'
    .venv/bin/python scripts/bake_variants.py --target bio --direction RUN/directions/bio.json \\
        --n 40 --neighbours chem --leak 0 '{}' '{"steps": 240}' '{"steps": 240, "seed": 1}'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from palette_lens.bake.config import BakeConfig
    from palette_lens.bake.train import bake_direction
    from palette_lens.compose.profiles import merged_profile
    from palette_lens.data.prompts import load_prompts
    from palette_lens.data.records import BORDERLINE, HARMLESS
    from palette_lens.evaluate.evaluator import EvalConfig, Evaluator
    from palette_lens.evaluate.leakage import AttackConfig, measure_leakage
    from palette_lens.evaluate.results import EvalSet
    from palette_lens.models.loading import load_model
    from palette_lens.search.candidates import candidates_from_residuals, collect_domain_residuals
    from palette_lens.search.direction import Direction

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--layer", type=int, default=19)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--n-other", type=int, default=12)
    ap.add_argument("--neighbours", default="", help="comma-separated other domains evaluated on --n prompts too")
    ap.add_argument("--direction", default=None, help="a saved direction (.json) instead of --layer's")
    ap.add_argument("--leak", type=int, default=8, help="requests per attack kind (0: no leakage run)")
    ap.add_argument("--subset", type=int, default=12,
                    help="also report rates on the first N test prompts of each harmful domain (the quick demo's)")
    ap.add_argument("--save", default=None, help="folder to save each adapter in (<save>/<i>/<target>)")
    ap.add_argument("settings", nargs="*", default=["{}"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = load_model()
    prompts = load_prompts()
    if args.direction:
        direction = Direction.load(args.direction)
    else:
        res = collect_domain_residuals(model, prompts, [args.target, HARMLESS], limit=None)
        cands = candidates_from_residuals(res[args.target], res[HARMLESS], args.target, model.fingerprint,
                                          prompts.data_hash([args.target, HARMLESS]))
        direction = cands.direction(args.layer, -1)
    gen = EvalConfig(64, 64, 12)
    evalset = EvalSet.build(prompts, None, "test", args.n_other, 24, 12)
    for d in [args.target, *filter(None, args.neighbours.split(","))]:
        evalset.prompts[d] = tuple(prompts.part(d, "test", args.n))
    evaluator = Evaluator(model, evalset, gen, cache=True)
    print(json.dumps({"target": args.target, "vanilla": evaluator.vanilla().refusal_rate()}), flush=True)
    for i, text in enumerate(args.settings):
        overrides = json.loads(text)
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        cfg = replace(BakeConfig(), **overrides)
        t0 = time.perf_counter()
        adapter = bake_direction(model, direction, prompts, cfg, progress=False).adapter
        bake_s = time.perf_counter() - t0
        if args.save:
            adapter.save(Path(args.save) / str(i) / args.target)
        lm = merged_profile(model, [adapter])
        result = evaluator.evaluate_lm(text, lm, [args.target])
        rates = result.refusal_rate()
        refused = result.refused
        subset = {d: sum(v[: args.subset]) / len(v[: args.subset]) for d, v in refused.items() if v}
        del lm
        others = [d for d in rates if d not in (args.target, HARMLESS, BORDERLINE)]
        leak = measure_leakage(model, prompts, {args.target: [adapter]},
                               AttackConfig(kinds=("profession", "roleplay", "mixed"), limit=args.leak), gen,
                               cache=True, progress=False) if args.leak else None
        print(json.dumps({
            "setting": overrides, "bake_s": round(bake_s, 1),
            "target_refused": rates[args.target],
            "other_kept_mean": sum(rates[d] for d in others) / len(others),
            "other_kept_worst": min(rates[d] for d in others),
            "rates": rates,
            f"rates_first{args.subset}": subset,
            "harmless_kl": round(result.harmless_kl, 4),
            "extra_leakage_pts": {r.attack: r.extra_leakage_pts for r in leak.rows} if leak else None,
        }), flush=True)


if __name__ == "__main__":
    main()
