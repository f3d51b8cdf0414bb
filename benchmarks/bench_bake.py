"""Bake benchmark: training on cached block inputs vs training through the full model; peak memory.

Run: .venv/bin/python benchmarks/bench_bake.py [--target cyber] [--layer 16] [--steps 20] [--full-steps 20]

Each variant runs in its own child process, so its peak resident memory (``ru_maxrss`` of that child, from
``os.wait4``) is its own; the model load's footprint is reported beside it. Variants:

- ``cached``: :func:`palette_lens.bake.train.bake` as shipped — capture the inputs of block l−1 once, then each
  step runs that block alone (validation checkpoints switched off, to time the training itself);
- ``full``: the same LoRA, data mix and loss, but every step runs the model's decoder on the batch (as a
  training loop without cached inputs would), reading block l−1's output with a hook.

Both run the same number of steps on the same batches; the ratio is per step and for the whole bake
(capture included). A default bake (validation included) is timed as well. Results go to
benchmarks/results/bake.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bake.json"


def _direction(model, prompts, target: str, layer: int):
    from palette_lens.models.residuals import collect_residuals
    from palette_lens.search.direction import Direction, diff_in_means

    t = collect_residuals(model, prompts.part(target, "train"), layers=[layer], positions=[-1], desc=None)
    h = collect_residuals(model, prompts.part("harmless", "train"), layers=[layer], positions=[-1], desc=None)
    r = diff_in_means(t.mean(), h.mean())[0, 0]
    return Direction(r, layer, -1, target, model_fingerprint=model.fingerprint)


def child(variant: str, target: str, layer: int, steps: int) -> dict:
    import torch

    from palette_lens.bake.config import BakeConfig
    from palette_lens.bake.train import bake_direction
    from palette_lens.data.prompts import load_prompts
    from palette_lens.models.loading import load_model

    torch.manual_seed(0)
    t = time.perf_counter()
    model = load_model()
    prompts = load_prompts()
    out: dict = {"variant": variant, "load_s": time.perf_counter() - t}
    out["rss_after_load_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    direction = _direction(model, prompts, target, layer)
    if variant == "default":
        res = bake_direction(model, direction, prompts, BakeConfig(), progress=False)
        out.update(timings_s=res.timings_s, steps=BakeConfig().steps, val=res.val)
    elif variant == "cached":
        res = bake_direction(model, direction, prompts, BakeConfig(steps=steps, eval_every=0), progress=False)
        # eval_every=0 still validates once at the end; report training and capture separately
        out.update(timings_s=res.timings_s, steps=steps, per_step_s=res.timings_s["train"] / steps)
    elif variant == "full":
        out.update(_full_model_training(model, direction, prompts, steps))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _full_model_training(model, direction, prompts, steps: int) -> dict:
    """The same training loop, but each step runs the decoder on token ids (no cached block inputs)."""
    import torch

    from palette_lens.bake.batches import sample_batch
    from palette_lens.bake.config import GROUPS, BakeConfig
    from palette_lens.bake.examples import BakeData
    from palette_lens.bake.lora_block import LoraBlock
    from palette_lens.bake.targets import block_targets, hard_negative_weights, token_losses, token_mask
    from palette_lens.models.blocks import position_ids_from_mask

    cfg = BakeConfig(steps=steps)
    layer_index = direction.layer - 1
    # prompts and weights exactly as bake_direction() builds them (the capture is only used for the sampling weights)
    data = BakeData.build(model, prompts, direction.domain, layer_index, cfg)
    pool, group = [], []
    for g, name in enumerate(GROUPS):
        pool += data.train[name]
        group += [g] * len(data.train[name])
    group_t = torch.tensor(group)
    is_target = group_t == 0
    inputs = data.inputs.subset(pool)
    weights = hard_negative_weights(inputs.last_out(-1), is_target, cfg.hard_negative_frac, cfg.hard_negative_weight)
    weights[group_t == 2] = 1.0
    probs = torch.tensor([cfg.mix[g] if (group_t == g).any() else 0.0 for g in range(4)])
    probs /= probs.sum()
    block = LoraBlock(model, layer_index, cfg.rank, cfg.alpha, cfg.seed)
    opt = torch.optim.AdamW(block.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    unit = direction.unit
    raw = model.decoder_layers()[layer_index]

    t0 = time.perf_counter()
    for _ in range(steps):
        idx = sample_batch(group_t, weights, probs, cfg.batch_size, gen)
        enc = model.encode([pool[i] for i in idx])
        mask = enc["attention_mask"]
        captured = {}

        def grab_in(_m, args, kwargs):
            captured["in"] = args[0] if args else kwargs["hidden_states"]
            captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

        h1 = raw.register_forward_pre_hook(grab_in, with_kwargs=True)
        try:
            with torch.no_grad():
                hs = model.decoder(**enc, position_ids=position_ids_from_mask(mask), use_cache=False,
                                   output_hidden_states=True).hidden_states
        finally:
            h1.remove()
        h_out = hs[layer_index + 1]
        pred = block.layer(captured["in"], **captured["kwargs"])
        pred = pred[0] if isinstance(pred, tuple) else pred
        targets = block_targets(h_out, unit, is_target[idx], cfg.scale, cfg.target_mode)
        tok = token_mask(mask, inputs.n_prefix, model.n_post, cfg.token_scope)
        loss = ((token_losses(pred, targets, cfg.loss) * tok).sum(-1) / tok.sum(-1).clamp_min(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = time.perf_counter() - t0
    return {"timings_s": {"train": train, "total": train}, "steps": steps, "per_step_s": train / steps}


def run_child(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--target", args.target, "--layer", str(args.layer),
           "--steps", str(args.full_steps if variant == "full" else args.steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{variant} failed (status {status})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb_wait4"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="cyber")
    parser.add_argument("--layer", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="steps of the side-by-side comparison")
    parser.add_argument("--full-steps", type=int, default=None, help="steps of the full-model variant (default: --steps)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.full_steps = args.full_steps or args.steps
    if args.child:
        print(json.dumps(child(args.child, args.target, args.layer, args.steps)))
        return
    import torch

    results: dict = {
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "target": args.target, "layer": args.layer, "load_avg_start": os.getloadavg()[0],
    }
    for variant in ("cached", "full", "default"):
        results[variant] = run_child(variant, args)
        print(variant, json.dumps({k: v for k, v in results[variant].items() if k != "val"}), flush=True)
    c, f = results["cached"], results["full"]
    results["per_step_ratio_full_over_cached"] = f["per_step_s"] / c["per_step_s"]
    steps = results["default"]["steps"]
    cached_total = c["timings_s"]["capture"] + c["per_step_s"] * steps
    results["bake_ratio_full_over_cached_at_default_steps"] = (f["per_step_s"] * steps) / cached_total
    results["load_avg_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"per step: full {f['per_step_s']:.2f}s vs cached {c['per_step_s']:.3f}s "
          f"({results['per_step_ratio_full_over_cached']:.1f}x); default bake {results['default']['timings_s']['total']:.0f}s; "
          f"written {RESULTS}")


if __name__ == "__main__":
    main()
