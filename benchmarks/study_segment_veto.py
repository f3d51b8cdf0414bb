"""Does reading each sentence on its own (the gate's segment veto) shut the gate on wrapped non-target requests,
including attack families the gate never trained on, and what does it cost authorized requests?

    .venv/bin/python benchmarks/study_segment_veto.py [--limit 80] [--trainings every_kind,without_mixed,...]
        [--out benchmarks/results/gate_segment_veto.json]

For each target (cyber, disinformation, hate) a domain-probe gate is trained with :func:`palette_lens.gate.domain_gate.fit_gate`
on every attack family (``every_kind``, the default) and on every family less one (``without_<kind>``, leave
one family out); ``every_kind+authorized_profession`` also adds a profession-framed variant of each authorized
prompt as an open example (``GateConfig.authorized_variants``). Each gate is measured on
the test split, which it never saw: the leakage measurement's attacks (``--limit`` per kind), the authorized
domain's plain test requests, the same requests framed as the authorized profession (how a legitimate user may
write) and every plain test prompt of the other domains. For each prompt the gate opens for, every sentence
(:func:`palette_lens.gate.domain_gate.prompt_segments`) is read on its own; the table gives the share of prompts opened with
the veto off and at each veto level (the summed probability of the other harmful domains one sentence may reach).

The features depend only on the gate's layer, so they are computed once per prompt and shared by every gate
(:meth:`palette_lens.gate.domain_gate.DomainGate.probability` and :meth:`~palette_lens.gate.domain_gate.DomainGate.other_harmful_probability`
on them are what :meth:`~palette_lens.gate.domain_gate.DomainGate.opens` computes). About 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

TARGETS = ("cyber", "disinformation", "hate")
KINDS = ("profession", "roleplay", "mixed")
TRAININGS = ("every_kind", *[f"without_{k}" for k in KINDS], "every_kind+authorized_profession")
VETOES = (None, 0.9, 0.7, 0.5, 0.3)


def _groups(prompts, target: str, limit: int) -> dict[str, list[str]]:
    """Held-out prompt groups for one target: attacks, authorized requests (plain and framed), other domains."""
    from palette_lens.data.attacks import attacks_from_prompt_set, profession_framed

    groups = {f"attack/{k}": [p.text for p in ps]
              for k, ps in attacks_from_prompt_set(prompts, (target,), limit=limit, split="test").items()}
    own = prompts.part(target, "test")
    groups["authorized/plain"] = list(own)
    groups["authorized/profession"] = [p.text for p in profession_framed([(target, r) for r in own], target)]
    for d in prompts.domains:
        if d != target:
            groups[f"plain/{d}"] = list(prompts.part(d, "test"))
    return groups


def _features(model, texts: list[str], layer: int, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    from palette_lens.gate.features import gate_features

    todo = [t for t in dict.fromkeys(texts) if t not in cache]
    if todo:
        for t, x in zip(todo, gate_features(model, todo, layer, "mean")):
            cache[t] = x
    return torch.stack([cache[t] for t in texts])


def main() -> None:
    from palette_lens.data.prompts import load_prompts
    from palette_lens.gate.config import GateConfig, default_gate_layer
    from palette_lens.gate.features import prompt_segments
    from palette_lens.gate.training import fit_gate
    from palette_lens.models.loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--out", default="benchmarks/results/gate_segment_veto.json")
    parser.add_argument("--trainings", default=",".join(TRAININGS[:4]), help=f"comma-separated, of {TRAININGS}")
    args = parser.parse_args()
    start = time.time()
    model, prompts = load_model(), load_prompts()
    layer = default_gate_layer(model)
    cache: dict[str, torch.Tensor] = {}
    results: dict = {}
    for target in TARGETS:
        groups = _groups(prompts, target, args.limit)
        for trained in args.trainings.split(","):
            left_out = trained[len("without_"):] if trained.startswith("without_") else None
            config = GateConfig(layer=layer, adversarial_kinds=tuple(k for k in KINDS if k != left_out),
                                authorized_variants=("profession",) if trained.endswith("authorized_profession") else ())
            gate = fit_gate(model, prompts, (target,), config)
            row: dict = {}
            for name, texts in groups.items():
                opened = (gate.probability(_features(model, texts, layer, cache)) > gate.threshold).tolist()
                worst = []  # per prompt: the highest other-harmful probability of one of its sentences
                for text in texts:
                    pieces = prompt_segments(text)
                    worst.append(float(gate.other_harmful_probability(_features(model, pieces, layer, cache)).max())
                                 if pieces else 0.0)
                row[name] = {"n": len(texts)}
                for veto in VETOES:
                    kept = [o and (veto is None or w <= veto) for o, w in zip(opened, worst)]
                    row[name]["off" if veto is None else f"veto_{veto}"] = sum(kept) / len(texts)
            results[f"{target}/{trained}"] = row
            print(target, trained, {k: {v: f"{r[v]:.1%}" for v in ("off", "veto_0.5")} for k, r in row.items()
                                    if not k.startswith("plain/") or k in ("plain/harmless", "plain/borderline")},
                  flush=True)
    doc = {"model": model.name, "layer": layer, "limit": args.limit, "trainings": args.trainings.split(","), "vetoes": [v for v in VETOES if v],
           "seconds": round(time.time() - start, 1), "share_opened": results}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"written {args.out} in {doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
