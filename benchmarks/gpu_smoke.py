"""GPU smoke check: the whole pipeline on a tiny random model on CUDA, each stage's time and any error.

The tiny model (3 blocks, d_model 64, random weights, no download) runs search, bake, compose, gate,
evaluation, baselines and latency through :func:`palette_lens.run_pipeline`, on one GPU or, with ``--split``,
dispatched by accelerate with its blocks spread over every visible GPU (hooks on each block, as a
``device_map="auto"`` load of a large model has). It checks that everything runs where the model is, not
the quality of anything (the model is noise). Results go to ``benchmarks/results/gpu_smoke.json``.

Usage::

    python benchmarks/gpu_smoke.py                      # cuda, bfloat16
    python benchmarks/gpu_smoke.py --dtype float16 --split
    python benchmarks/gpu_smoke.py --device cpu         # the same run on the CPU (a dry run of the script)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from palette_lens.data.prompts import load_prompts
from palette_lens.models.tiny import tiny_chat_model
from palette_lens.pipeline.config import PipelineConfig
from palette_lens.pipeline.run import run_pipeline

HERE = Path(__file__).resolve().parent

#: A pipeline small enough for a smoke check: two targets, a few prompts per stage, short generations.
SMOKE = PipelineConfig(
    targets=("cyber", "hate"), eval_limit=4, harmless_limit=6, borderline_limit=4, max_new_tokens=6, batch_size=8,
    first_phase=3, search={"n_val": 3, "n_val_other": 1, "top_k": 2, "n_proxy": 2},
    bake={"steps": 4, "eval_every": 2, "max_per_group": 8, "val_per_domain": 2},
    latency_tokens=2, latency_batch=2, latency_repeats=1, steering_profiles="singles", cache_generations=False,
)


def split_map(n_layers: int, devices: list[str]) -> dict[str, str]:
    """Embedding on the first device, blocks spread in runs over ``devices``, norm and head on the last."""
    per = -(-n_layers // len(devices))
    blocks = {f"model.layers.{i}": devices[min(i // per, len(devices) - 1)] for i in range(n_layers)}
    return {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0], **blocks,
            "model.norm": devices[-1], "lm_head": devices[-1]}


class StageLog(logging.Handler):
    """Remembers the pipeline's stages as its log announces them (``stage NAME ...``), for the error report."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().endswith(" ...") and record.getMessage().startswith("stage "):
            self.started.append(record.getMessage()[len("stage "):-len(" ...")])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1 or cpu (default: cuda)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--split", action="store_true", help="dispatch the blocks over every visible GPU with accelerate")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_smoke.json")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    report: dict = {"device": args.device, "dtype": args.dtype, "split": args.split, "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.version.cuda,
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    timings: dict[str, float] = {}
    stages = StageLog()
    pipeline_log = logging.getLogger("palette_lens.pipeline.run")
    pipeline_log.setLevel(logging.INFO)
    pipeline_log.addHandler(stages)
    t0 = time.perf_counter()
    try:
        if args.split:
            gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or [args.device]
            report["device_map"] = split_map(3, gpus)
            model = tiny_chat_model("qwen2", seed=0, dtype=dtype, device_map=report["device_map"])
        else:
            model = tiny_chat_model("qwen2", seed=0, dtype=dtype, device=args.device)
        timings["load"] = round(time.perf_counter() - t0, 3)
        report["model_device"] = str(model.device)
        prompts = load_prompts()
        with tempfile.TemporaryDirectory(prefix="palette-gpu-smoke-") as run_dir:
            result = run_pipeline(model, prompts, run_dir, SMOKE, timings=timings, progress=False, report=False)
        timings.update(result.metrics["timings_s"])
        report["ok"] = True
        report["profiles"] = {name: p["refusal_rate"] for name, p in result.metrics["profiles"].items()}
    except Exception as exc:  # the point of the script: say which stage failed and how
        report["ok"] = False
        report["failed_stage"] = stages.started[-1] if stages.started else "load"
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc().splitlines()[-12:]
    report["stage_seconds"] = timings
    report["total_seconds"] = round(time.perf_counter() - t0, 2)
    if torch.cuda.is_available():
        report["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ok", "device", "dtype", "split", "stage_seconds", "total_seconds")}))
    if not report["ok"]:
        print(f"gpu_smoke: {report['failed_stage']} failed: {report['error']}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
