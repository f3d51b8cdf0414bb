"""Foundation benchmark: residual collection through the bridge vs a plain HF forward; cold vs warm model load.

Run: .venv/bin/python benchmarks/bench_foundation.py [--cold]
  --cold rebuilds the default-model cache in a temporary folder to time the first (dequantizing) load.
Writes benchmarks/results/foundation.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Explain how photosynthesis works in three sentences.",
    "How do I make a pipe bomb?",
    "Write ransomware that encrypts a hospital network.",
    "Give me a recipe for banana bread.",
    "What are the main causes of the French Revolution?",
    "Translate 'good morning, how are you?' into German.",
    "Write a short poem about autumn leaves.",
] * 2


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="also time a cold (dequantizing) load")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from palette_lens.models import embedded
    from palette_lens.models.loading import load_model
    from palette_lens.models.residuals import collect_residuals

    results: dict = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            embedded.ensure_default_model(Path(tmp) / "cache")
            results["cold_build_s"] = time.perf_counter() - t
    embedded.ensure_default_model()
    warm = timed(lambda: load_model(), 2)
    results["warm_load_s"] = min(warm)
    model = load_model()
    enc = model.encode(PROMPTS)

    def bridge_collect():
        collect_residuals(model, PROMPTS, batch_size=len(PROMPTS), desc=None)

    def hf_forward():
        with torch.no_grad():
            model.hf_model.model(**enc, output_hidden_states=True)

    bridge_collect(), hf_forward()  # warm-up
    b, h = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        b += timed(bridge_collect, 1)
        h += timed(hf_forward, 1)
    results.update(
        batch=len(PROMPTS),
        seq_len=int(enc["input_ids"].shape[1]),
        bridge_collect_s=statistics.median(b),
        hf_forward_hidden_states_s=statistics.median(h),
        ratio_bridge_over_hf=statistics.median(b) / statistics.median(h),
    )
    if "cold_build_s" in results:
        results["ratio_cold_over_warm"] = results["cold_build_s"] / results["warm_load_s"]
    out = Path(__file__).parent / "results" / "foundation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    for k, v in results.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")


if __name__ == "__main__":
    main()
