"""float32 vs bfloat16 (vs float16) on this machine: forward passes and generation, side by side.

The embedded default model is loaded once per dtype; the runs alternate (f32, bf16, f16, f32, ...) so that
background load affects them alike, and the median is reported with the ratio to float32:

- ``forward_s``: first-token log-probs of ``--prompts`` harmful and harmless test prompts (the search's and
  the bake's validation work);
- ``generate_ms_per_token``: greedy decoding of ``--tokens`` tokens for 4 prompts (the evaluation's work).

Writes ``benchmarks/results/dtype.json``.

Usage: ``python benchmarks/bench_dtype.py [--dtypes float32 bfloat16] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from palette_lens.data.prompts import load_prompts
from palette_lens.evaluate.latency import measure_latency
from palette_lens.models.copies import plain_hf_model
from palette_lens.models.loading import load_model
from palette_lens.util.atomic import atomic_write_json

OUT = Path(__file__).resolve().parent / "results" / "dtype.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    prompts = load_prompts()
    texts = prompts.part("cyber", "test")[: args.prompts // 2] + prompts.part("harmless", "test")[: args.prompts // 2]
    models = {d: load_model(dtype=d) for d in args.dtypes}
    for m in models.values():  # warm
        m.last_logits(texts[:2])
    forward: dict[str, list[float]] = {d: [] for d in models}
    for _ in range(args.repeats):
        for d, m in models.items():
            t0 = time.perf_counter()
            m.last_logits(texts, batch_size=16)
            forward[d].append(time.perf_counter() - t0)
    ref = models[args.dtypes[0]]
    lat = measure_latency(ref, texts, {d: (plain_hf_model(m), ()) for d, m in models.items()},
                          new_tokens=args.tokens, batch_size=4, repeats=args.repeats)
    medians = {d: statistics.median(v) for d, v in forward.items()}
    doc = {
        "model": ref.name, "load_average": os.getloadavg(), "repeats": args.repeats,
        "forward_s": medians, "forward_ratio_to_float32": {d: v / medians[args.dtypes[0]] for d, v in medians.items()},
        "generate_ms_per_token": lat.ms_per_token, "generate_ratio_to_float32": lat.ratios(args.dtypes[0]),
    }
    atomic_write_json(OUT, doc)
    print(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
