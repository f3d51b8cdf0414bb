"""Training every default profile's gate with and without a shared feature cache, side by side in one run.

A run trains one gate per profile (cyber, disinformation, hate, cyber+disinformation and the triple on the
default model); their training prompts are mostly the same (every domain's requests and gate pool; only the
variants depend on the authorized domains). This trains the five gates twice on the default model, first each
reading its own prompts (as before the cache), then with one
:class:`~palette_lens.gate.features.GateFeatureCache`, and prints the seconds of each, the ratio, the prompts
read, and the largest difference between the two gates' probabilities on their training prompts (the same
gates up to float noise of batching).

Usage: ``python benchmarks/bench_gate_features.py [--json benchmarks/results/gate_feature_cache.json]``
(about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from palette_lens.data.prompts import load_prompts
from palette_lens.gate.config import GateConfig
from palette_lens.gate.features import GateFeatureCache
from palette_lens.gate.training import fit_gate, gate_training_examples
from palette_lens.models.loading import load_model

PROFILES = (("cyber",), ("disinformation",), ("hate",), ("cyber", "disinformation"),
            ("cyber", "disinformation", "hate"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model, prompts, config = load_model(), load_prompts(), GateConfig()
    examples = {p: gate_training_examples(prompts, p, config)[0] for p in PROFILES}
    gates, seconds = {}, {}
    for form in ("separate", "shared cache"):
        cache = GateFeatureCache(model) if form == "shared cache" else None
        t0 = time.perf_counter()
        gates[form] = {p: fit_gate(model, prompts, p, config, feature_cache=cache) for p in PROFILES}
        seconds[form] = time.perf_counter() - t0
    differences = {}
    for p in PROFILES:  # the shared cache holds every training prompt's features by now
        x = cache.get(examples[p], gates["separate"][p].layer, config.feature)
        a, b = gates["separate"][p].probability(x), gates["shared cache"][p].probability(x)
        differences["+".join(p)] = float((a - b).abs().max())
    read = {"separate": sum(len(set(t)) for t in examples.values()),
            "shared cache": len(set().union(*examples.values()))}
    result = {"seconds": seconds, "ratio": seconds["shared cache"] / seconds["separate"], "prompts_read": read,
              "max_probability_difference": differences}
    print(f"separate: {seconds['separate']:.0f} s ({read['separate']} prompts read); shared cache: "
          f"{seconds['shared cache']:.0f} s ({read['shared cache']} read); ratio {result['ratio']:.2f}")
    print("largest |Δ p(open)| per gate:", {k: f"{v:.1e}" for k, v in differences.items()})
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
