"""A profile as one gated model vs vanilla and the merged profile: latency per token, memory, the gate's share.

Side by side in one run, on the embedded default model with the shipped adapters and gates (the triple
``cyber+disinformation+hate``, routed, and the single ``cyber``):

- ``ms_per_token``: greedy decoding of ``--tokens`` tokens for ``--batch`` harmless and target prompts, variants
  interleaved (:func:`palette_lens.evaluate.latency.measure_latency`): ``vanilla`` (a plain copy of the base
  model), ``merged`` (``W + w·ΣΔW``) and ``gated`` (:class:`palette_lens.gate.gated_profile.GatedProfile`);
- ``added_mib``: what the gated profile adds to the base model in memory (its LoRA factors; the weights are
  shared, checked by pointer);
- ``gate_share_of_prefill``: the gate's own work (features, probe, scales) over the gated prefill's time.

Writes ``benchmarks/results/gated.json``.

Usage: ``python benchmarks/bench_gated.py [--tokens 16] [--batch 4] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from palette_lens.compose.profiles import Profile, merged_profile, profile_adapters
from palette_lens.data.prompts import load_prompts
from palette_lens.evaluate.latency import measure_latency
from palette_lens.gate.gated_profile import GatedProfile
from palette_lens.models.copies import plain_hf_model
from palette_lens.models.loading import load_model
from palette_lens.pipeline.runs import load_run
from palette_lens.util.atomic import atomic_write_json

OUT = Path(__file__).resolve().parent / "results" / "gated.json"


def shares_weights(gated: torch.nn.Module, base: torch.nn.Module) -> bool:
    """Whether every base weight of the gated model is the base model's own tensor (no copy)."""
    ours = {p.data_ptr() for p in base.parameters()}
    return all(p.data_ptr() in ours for name, p in gated.named_parameters() if "lora" not in name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefills", type=int, default=5, help="prefills timed for the gate's share")
    args = ap.parse_args(argv)

    model = load_model()
    run = load_run()
    prompts = load_prompts()
    texts = prompts.part("harmless", "test")[: args.batch // 2] + prompts.part("cyber", "test")[: args.batch - args.batch // 2]
    plain = plain_hf_model(model)
    results: dict = {"model": model.name, "tokens": args.tokens, "batch": args.batch, "repeats": args.repeats,
                     "load_average": os.getloadavg(), "profiles": {}}
    for name in ("cyber", "cyber+disinformation+hate"):
        profile = Profile.parse(name)
        baked = [run.adapters[d] for d in profile.domains]
        gate = run.gate(name, model)
        gated = GatedProfile(model, baked, gate)
        merged = merged_profile(model, profile_adapters(profile, run.adapters))
        lat = measure_latency(model, texts, {"vanilla": (plain, ()), "merged": (merged, ()), "gated": (gated.hf_model, ())},
                              new_tokens=args.tokens, batch_size=args.batch, repeats=args.repeats)
        gated.logits(texts)  # warm
        before, t0 = gated.gate_seconds, time.perf_counter()
        for _ in range(args.prefills):
            gated.logits(texts)
        prefill = (time.perf_counter() - t0) / args.prefills
        gate_share = (gated.gate_seconds - before) / args.prefills / prefill
        results["profiles"][name] = {
            "ms_per_token": lat.ms_per_token, "ratios_to_vanilla": lat.ratios(),
            "added_mib": gated.added_bytes() / 2**20, "shares_base_weights": shares_weights(gated.hf_model, plain),
            "prefill_ms": prefill * 1000, "gate_share_of_prefill": gate_share,
            "opened": gated.decision.opened.tolist(),
        }
        print(name, json.dumps(results["profiles"][name]))
    atomic_write_json(OUT, results)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
