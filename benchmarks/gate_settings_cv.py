"""Gate settings compared by five-fold out-of-fold opening rates on the requests the gates train on (no test split).

For each default profile's gate (cyber, disinformation, hate, cyber+disinformation, cyber+disinformation+hate)
the plain requests a gate trains on (train, validation and gate pool of every harmful domain; train and
validation of harmless and borderline) are cut into five folds. Each fold's gate is trained as
:func:`palette_lens.gate.training.fit_gate` trains it (``GateConfig()``: variants, pool, C, segment veto) on
every training prompt that does not contain a held-out request, and decides on the held-out requests under
several rules:

* threshold 0.3 (the default), 0.4 and 0.5 on the authorized domains' summed probability;
* "most likely": 0.3, and the authorized domains' sum also above every other class;
* "no other > 0.25": 0.3, and the other harmful domains' summed probability below 0.25;
* layer 9 instead of layer 6, threshold 0.3.

It prints, per profile and setting, the share of held-out authorized requests the gate opened for (the worst
authorized domain) and the share of the worst other harmful domain's, and writes every rate with ``--json``.
Features are read once per layer (one forward pass over every text), so the time is the 50 probe fits:
about 10 minutes on 2 CPU cores.

Usage: ``python benchmarks/gate_settings_cv.py [--folds 5] [--json benchmarks/results/gate_settings_cv.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.prompts import load_prompts
from palette_lens.gate.config import GateConfig
from palette_lens.gate.domain_gate import DomainGate
from palette_lens.gate.features import prompt_segments
from palette_lens.gate.training import fit_gate_on_features, gate_training_examples
from palette_lens.models.loading import load_model
from palette_lens.models.residuals import collect_residuals

PROFILES = ("cyber", "disinformation", "hate", "cyber+disinformation", "cyber+disinformation+hate")
# name -> (layer, threshold, rule, rule value)
SETTINGS = {
    "0.3 (default)": (6, 0.3, "sum", None),
    "0.4": (6, 0.4, "sum", None),
    "0.5": (6, 0.5, "sum", None),
    "most likely": (6, 0.3, "most_likely", None),
    "no other > 0.25": (6, 0.3, "no_other", 0.25),
    "layer 9": (9, 0.3, "sum", None),
}


def held_out_requests(prompts: PromptSet) -> dict[str, list[str]]:
    """Every domain's plain requests a gate trains on: train, validation and (harmful domains) the gate pool."""
    out = {}
    for d in prompts.domains:
        parts = ("train", "val", "gate") if d in prompts.harmful_domains else ("train", "val")
        out[d] = [p for part in parts for p in prompts.part(d, part)]
    return out


def read_features(model, texts: list[str], layers: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """layer → text → [d_model] mean ``resid_pre`` over the post-instruction positions (as the gate reads)."""
    res = collect_residuals(model, texts, layers=layers, positions=model.positions, desc="features")
    mean = res.vectors.mean(2)  # [n, n_layers, d_model]
    return {layer: {t: mean[i, j] for i, t in enumerate(texts)} for j, layer in enumerate(layers)}


def decide(gate: DomainGate, feats: dict[str, torch.Tensor], texts: list[str], threshold: float, rule: str,
           value: float | None) -> list[bool]:
    """Per text, whether the gate opens under ``rule`` (the segment veto of the gate applied after)."""
    x = torch.stack([feats[t] for t in texts])
    p_open = gate.probability(x)
    opened = p_open > threshold
    if rule == "most_likely":
        per = gate.domain_probabilities(x)
        rest = torch.stack([p for c, p in per.items() if c not in gate.domains]).amax(0)
        opened &= p_open >= rest
    elif rule == "no_other":
        opened &= gate.other_harmful_probability(x) < value
    out = opened.tolist()
    for i, t in enumerate(texts):
        segments = prompt_segments(t)
        if out[i] and segments and gate.segment_veto is not None:
            other = gate.other_harmful_probability(torch.stack([feats[s] for s in segments]))
            out[i] = not bool((other > gate.segment_veto).any())
    return out


def out_of_fold(prompts: PromptSet, profile: str, features, folds: int) -> dict[str, dict[str, float]]:
    """setting → domain → share of that domain's held-out requests the fold's gate opened for."""
    domains = tuple(profile.split("+"))
    config = GateConfig()
    texts, names = gate_training_examples(prompts, domains, config)
    requests = held_out_requests(prompts)
    opened: dict[str, dict[str, list[bool]]] = {s: {d: [] for d in requests} for s in SETTINGS}
    for layer in sorted({s[0] for s in SETTINGS.values()}):
        feats = features[layer]
        for fold in range(folds):
            held = {d: rs[fold::folds] for d, rs in requests.items()}
            every_held = [h for hs in held.values() for h in hs]
            keep = [i for i, t in enumerate(texts) if not any(h in t for h in every_held)]
            x = torch.stack([feats[texts[i]] for i in keep])
            gate = fit_gate_on_features(x, [names[i] for i in keep], domains, config, layer)
            for name, (at, threshold, rule, value) in SETTINGS.items():
                if at != layer:
                    continue
                for d, hs in held.items():
                    opened[name][d] += decide(gate, feats, hs, threshold, rule, value)
    return {s: {d: sum(v) / len(v) for d, v in per.items()} for s, per in opened.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model, prompts = load_model(), load_prompts()
    texts: set[str] = set()
    for profile in PROFILES:
        texts.update(gate_training_examples(prompts, profile.split("+"), GateConfig())[0])
    for rs in held_out_requests(prompts).values():
        texts.update(rs)
    texts.update(s for t in list(texts) for s in prompt_segments(t))
    features = read_features(model, sorted(texts), sorted({s[0] for s in SETTINGS.values()}))
    harmful = prompts.harmful_domains
    results = {}
    print("| gate | " + " | ".join(SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for profile in PROFILES:
        rates = out_of_fold(prompts, profile, features, args.folds)
        results[profile] = rates
        authorized = profile.split("+")
        cells = []
        for per in rates.values():
            worst_other = max(per[d] for d in harmful if d not in authorized)
            cells.append(f"{100 * min(per[d] for d in authorized):.0f} / {100 * worst_other:.0f}")
        print(f"| {profile} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"folds": args.folds, "settings": SETTINGS, "rates": results}, indent=1))


if __name__ == "__main__":
    main()
