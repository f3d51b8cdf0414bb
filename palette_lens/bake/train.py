"""Bake a refusal direction into a LoRA adapter on one decoder block, trained on cached block inputs.

For a direction r read at ``resid_pre`` of layer l, a LoRA (rank 8, alpha 16 by default) on every linear
module of block ``l − 1`` is trained so that the block's output ``h'`` matches, per token:

- on target-domain prompts: ``h − s·(h·r̂) r̂`` (refusal component removed, over-shot by ``s``);
- on every other prompt (non-target harmful, harmless, borderline): ``h`` (``"neutral"``, default) or
  ``h + s·(h·r̂) r̂`` (``"reinforce"``, as in the official code);

with loss ``1 − cos(h', target)`` (default) or relative MSE ``‖h' − target‖² / ‖target‖²``, averaged over
the prompt's own tokens (the chat-template prefix shared by every prompt is skipped: its hidden states are
the same for all prompts, so domain-specific targets there would contradict each other).

The frozen prefix of the model is run once per prompt (:func:`capture_block_inputs`); each step then
costs one block. Batches mix target : other harmful : harmless : borderline by ``BakeConfig.mix``;
non-target prompts whose block output lies closest to the target domain's mean (hard negatives) are
sampled more often. Half of the harmful rows (``input_shift``) see their input shifted along r̂ first
(``x + c·(x·r̂) r̂``, c ∈ [−1, 0.5]), with the target computed from the frozen block on that input: adapters
of a composed profile sit upstream of each other, and an adapter trained only on vanilla inputs misreads
the shifted ones (this keeps composed profiles refusing outside their domains). Every ``eval_every``
steps first-token refusal scores on validation prompts are computed from cached inputs (adapted block +
the rest of the model) and the most selective checkpoint is kept. With ``margin_retry`` a target whose kept
checkpoint still loses refusal on some other domain (validation) is baked once more with a refusal margin on the
other harmful domains, and the better of the two is kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from palette_lens.adapters.baked import BakedAdapter
from palette_lens.bake.batches import sample_batch, shifted_inputs
from palette_lens.bake.config import GROUPS, BakeConfig
from palette_lens.bake.examples import BakeData, default_refusal_ids, validation_metrics
from palette_lens.bake.lora_block import LoraBlock
from palette_lens.bake.margin import margin_helps, retry_margin, val_summary
from palette_lens.bake.targets import (
    block_targets,
    hard_negative_weights,
    token_losses,
    token_mask,
)
from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import BORDERLINE, HARMLESS
from palette_lens.errors import PaletteError
from palette_lens.models.blocks import BlockInputs, module_device, rotary_embedding, run_block, run_suffix
from palette_lens.models.chat_model import ChatModel
from palette_lens.search.direction import Direction

log = logging.getLogger(__name__)

@dataclass
class BakeResult:
    """What :func:`bake_direction` returns.

    Attributes:
        adapter: the baked adapter (best validation checkpoint), with metadata and metrics.
        history: one dict per logged step (``step``, ``loss``, and validation metrics at checkpoints).
        val: validation metrics of the kept checkpoint (first-token scores).
        baseline_val: the same metrics for the unadapted block.
        timings_s: seconds spent per stage (``capture``, ``train``, ``validate``, ``total``).
        inputs: the cached block inputs it used (pass them as ``inputs`` to another bake at the same block).

    Examples:
        >>> baked = bake_direction(model, found.chosen, prompts)           # doctest: +SKIP
        >>> baked.adapter.save("runs/demo/adapters/cyber")                 # doctest: +SKIP
        >>> [h["step"] for h in baked.history][-1]                         # doctest: +SKIP
        120
    """

    adapter: BakedAdapter
    history: list[dict] = field(default_factory=list)
    val: dict = field(default_factory=dict)
    baseline_val: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    inputs: BlockInputs | None = field(default=None, repr=False)


# ---------------------------------------------------------------------- bake
def bake_direction(
    model: ChatModel,
    direction: Direction,
    prompts: PromptSet,
    config: BakeConfig = BakeConfig(),
    *,
    refusal_ids: Sequence[int] | None = None,
    inputs: BlockInputs | None = None,
    progress: bool = True,
) -> BakeResult:
    """Train a single-block LoRA adapter that removes ``direction`` for its domain only.

    Args:
        model: the base chat model (never modified).
        direction: the chosen direction (layer l ≥ 1, position, domain = the target domain).
        prompts: the prompt set (train split for training, validation split for checkpoint selection).
        config: training settings.
        refusal_ids: the refusal token set R for first-token scores (default: opener tokens).
        inputs: previously captured :class:`BlockInputs` of block ``l − 1`` to reuse (e.g. for another
            domain with the same layer); captured here otherwise.
        progress: show a progress bar.

    Returns:
        :class:`BakeResult` with the adapter of the best validation checkpoint (on block ``l − 1``). With
        the default margins (``margin_retry`` and ``margin_compose`` both > 0, ``other_scale`` 0) the bake
        runs twice; which one was kept is recorded in ``adapter.meta["margin_retry"]``.

    Raises:
        PaletteError: the direction was read at layer 0 (no block before it) or past the last layer, or the
            target domain has no training prompts.
        AdapterMismatchError: the direction was computed on another model.
        UnknownDomainError: the direction's domain is not in ``prompts``.

    Examples:
        >>> found = search_direction(model, prompts, "cyber")                    # doctest: +SKIP
        >>> baked = bake_direction(model, found.chosen, prompts, BakeConfig(steps=60))   # doctest: +SKIP
        >>> baked.adapter.layer_index == found.chosen.layer - 1                  # doctest: +SKIP
        True
    """
    first = _bake_once(model, direction, prompts, config, refusal_ids=refusal_ids, inputs=inputs, progress=progress)
    margin = retry_margin(first.val, config)
    if margin == 0:
        return first
    log.info("bake %s: weakest other domain keeps %.2f of its refusal mass (threshold %.2f): baking again with "
             "margin %.2f", direction.domain, first.val["retain_min"], config.margin_retry_below, margin)
    mix = (*config.mix[:3], max(config.mix[3], config.margin_retry_borderline))
    retry_config = replace(config, other_scale=margin, mix=mix)
    retry = _bake_once(model, direction, prompts, retry_config, refusal_ids=refusal_ids, inputs=first.inputs,
                       progress=progress)
    keep_retry = margin_helps(first.val, retry.val, config)
    kept, other = (retry, first) if keep_retry else (first, retry)
    kept.adapter.meta["margin_retry"] = {
        "kept": "margin" if keep_retry else "plain",
        "plain": val_summary(first.val), "margin": val_summary(retry.val), "margin_scale": margin,
    }
    kept.timings_s = {k: kept.timings_s.get(k, 0.0) + other.timings_s.get(k, 0.0) for k in kept.timings_s}
    kept.adapter.meta["train_seconds"] = kept.timings_s["total"]
    log.info("bake %s: kept the %s bake (weakest other domain %.2f vs %.2f)", direction.domain,
             "margin" if keep_retry else "plain", kept.val["retain_min"], other.val["retain_min"])
    return kept


def _bake_once(
    model: ChatModel,
    direction: Direction,
    prompts: PromptSet,
    config: BakeConfig,
    *,
    refusal_ids: Sequence[int] | None,
    inputs: BlockInputs | None,
    progress: bool,
) -> BakeResult:
    """One training run of :func:`bake_direction` (no margin fallback)."""
    t_start = time.perf_counter()
    if direction.layer < 1 or direction.layer > model.n_layers:
        raise PaletteError(f"cannot bake a direction read at layer {direction.layer}: it needs a block before it")
    direction.check_model(model.fingerprint)
    target = direction.domain
    layer_index = direction.layer - 1
    refusal_ids = list(refusal_ids) if refusal_ids is not None else default_refusal_ids(model)
    gen = torch.Generator().manual_seed(config.seed)

    if config.adversarial_negatives:
        from palette_lens.data.augment import augment_prompt_set

        prompts = augment_prompt_set(prompts, target, config.adversarial_negatives, config.seed)
    data = BakeData.build(model, prompts, target, layer_index, config, inputs)
    t_capture = time.perf_counter() - t_start
    block = LoraBlock(model, layer_index, config.rank, config.alpha, config.seed)
    device = module_device(block.layer)  # every training tensor is made on the block's device
    unit = direction.unit.float().to(device)

    # training pools
    pool_prompts: list[str] = []
    pool_group: list[int] = []
    for g, name in enumerate(GROUPS):
        pool_prompts += data.train[name]
        pool_group += [g] * len(data.train[name])
    if not data.train["target"]:
        raise PaletteError(f"no training prompts for {target!r}")
    train_inputs = data.inputs.subset(pool_prompts)
    group = torch.tensor(pool_group)
    is_target = group == 0
    outs = train_inputs.last_out(direction.position)
    weights = hard_negative_weights(outs, is_target, config.hard_negative_frac, config.hard_negative_weight)
    weights[group == 2] = 1.0  # hard negatives among harmful and borderline prompts only
    group_probs = []
    for g in range(len(GROUPS)):
        sel = group == g
        group_probs.append(config.mix[g] if sel.any() else 0.0)
    group_probs_t = torch.tensor(group_probs, dtype=torch.float)
    group_probs_t /= group_probs_t.sum()

    # validation set (cached inputs, first-token scores through the rest of the model)
    val_prompts: list[str] = []
    val_groups: dict[str, slice] = {}
    for name, ps in data.val.items():
        if ps:
            val_groups[name] = slice(len(val_prompts), len(val_prompts) + len(ps))
            val_prompts += ps
    val_inputs = data.inputs.subset(val_prompts)
    rotary = rotary_embedding(model)

    t0 = time.perf_counter()
    base_val_lp = run_suffix(model, val_inputs, rotary=rotary)
    baseline_val = validation_metrics(base_val_lp, base_val_lp, val_groups, refusal_ids)
    t_validate = time.perf_counter() - t0

    params = block.parameters()
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history: list[dict] = []
    checkpoints: list[tuple[float, int, tuple, dict]] = []  # (first-token selectivity, step, factors, metrics)
    n_post = model.n_post
    dtype = torch.float32
    t_train = 0.0
    bar = tqdm(range(config.steps), desc=f"bake {target}", leave=False, disable=not progress)
    running = None
    for step in bar:
        t1 = time.perf_counter()
        block.peft_model.train()
        idx = sample_batch(group, weights, group_probs_t, config.batch_size, gen)
        h_in, mask, h_out = train_inputs.collate(idx, device=device)
        rows = group[idx].to(device)
        tgt_rows = rows == 0
        if config.input_shift:
            h_in, h_out = shifted_inputs(block, rotary, h_in, mask, h_out, unit, rows <= 1, train_inputs.n_prefix,
                                          config, gen)
        targets = block_targets(h_out, unit, tgt_rows, config.scale, config.target_mode, config.other_scale, rows == 1)
        pred = run_block(block.layer, rotary, h_in.to(dtype), mask)
        tok = token_mask(mask, train_inputs.n_prefix, n_post, config.token_scope)
        per_tok = token_losses(pred, targets, config.loss)
        per_prompt = (per_tok * tok).sum(-1) / tok.sum(-1).clamp_min(1.0)
        loss = per_prompt.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        t_train += time.perf_counter() - t1
        loss_value = loss.item()
        running = loss_value if running is None else 0.9 * running + 0.1 * loss_value
        bar.set_postfix(loss=f"{running:.4f}")
        record: dict = {"step": step + 1, "loss": loss_value}
        last = step + 1 == config.steps
        if last or (config.eval_every and (step + 1) % config.eval_every == 0):
            t2 = time.perf_counter()
            block.peft_model.eval()
            lp = run_suffix(model, val_inputs, first_block=block.layer, rotary=rotary)
            metrics = validation_metrics(lp, base_val_lp, val_groups, refusal_ids, config.other_scale > 0)
            t_validate += time.perf_counter() - t2
            record["val"] = metrics
            log.info(
                "bake %s step %d: loss %.4f, p_target %.3f (base %.3f), retain mean %.3f min %.3f, KL %.4f",
                target, step + 1, loss_value, metrics["p_target"], metrics["p_target_base"],
                metrics["retain_mean"], metrics["retain_min"], metrics["kl_harmless"],
            )
            checkpoints.append((metrics["selectivity"], step + 1, block.factors(), metrics))
        history.append(record)
    ranked = sorted(checkpoints, key=lambda c: (-c[0], c[1]))  # most selective first, earlier step on ties
    check: dict = {}
    kept = 0
    if config.generation_check > 0 and len(ranked) > 0:
        from palette_lens.bake.generation_check import generation_check

        t3 = time.perf_counter()
        shortlist = ranked[: config.generation_check]
        candidates = [BakedAdapter(layer_index=layer_index, lora_A=a, lora_B=b, rank=config.rank, alpha=config.alpha,
                                   meta={"domain": target}, direction=direction.vector.detach().float().clone())
                      for _, _, (a, b), _ in shortlist]
        kept, records = generation_check(model, candidates, data.val)
        check = {"steps": [c[1] for c in shortlist], "kept_step": shortlist[kept][1], "candidates": records[:-1],
                 "vanilla": records[-1]["rates"]}
        t_validate += time.perf_counter() - t3
    _, best_step, (lora_a, lora_b), best_metrics = ranked[kept]
    total = time.perf_counter() - t_start
    timings = {"capture": t_capture, "train": t_train, "validate": t_validate, "total": total}
    used = [target, *[d for d in prompts.harmful_domains if d != target], HARMLESS]
    if BORDERLINE in prompts.by_domain:
        used.append(BORDERLINE)
    meta = {
        "domain": target,
        "base_model": model.name,
        "base_fingerprint": model.fingerprint,
        "base_source": model.source,
        "layer": direction.layer,
        "position": direction.position,
        "scale": config.scale,
        "target_mode": config.target_mode,
        "loss": config.loss,
        "config": config.to_dict(),
        "best_step": best_step,
        "data_hashes": {"target": prompts.data_hash([target]), "all": prompts.data_hash(used)},
        "direction": {"norm": direction.norm, "data_hash": direction.data_hash, "meta": direction.meta},
        "refusal_ids": list(refusal_ids),
        "metrics": {"val_first_token": best_metrics, "val_first_token_base": baseline_val,
                    **({"val_generation": check} if check else {})},
        "train_seconds": total,
        "n_train": {k: len(v) for k, v in data.train.items()},
    }
    adapter = BakedAdapter(
        layer_index=layer_index, lora_A=lora_a, lora_B=lora_b, rank=config.rank, alpha=config.alpha,
        meta=meta, direction=direction.vector.detach().float().clone(),
    )
    log.info("baked %s into block %d in %.1fs (best step %d)", target, layer_index, total, best_step)
    return BakeResult(adapter, history, best_metrics, baseline_val, timings, data.inputs)
