"""The prompts a bake trains and validates on, and the validation metrics that pick its checkpoint.

:class:`BakeData` groups the train and validation prompts of one bake (target, other harmful, harmless,
borderline) with their cached block inputs; :func:`validation_metrics` scores an adapted block against the
unadapted one on first-token refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import BORDERLINE, HARMLESS
from palette_lens.models.blocks import BlockInputs, capture_block_inputs
from palette_lens.models.chat_model import ChatModel
from palette_lens.refusal.tokens import first_token_kl, opener_tokens, refusal_scores

if TYPE_CHECKING:  # pragma: no cover
    from palette_lens.bake.config import BakeConfig


# ---------------------------------------------------------------------- data
@dataclass
class BakeData:
    """Training and validation prompts of one bake, grouped, with their cached block inputs."""

    train: dict[str, list[str]]
    val: dict[str, list[str]]  # keys: target, harmless, borderline, and each other harmful domain
    inputs: BlockInputs

    @staticmethod
    def build(
        model: ChatModel, prompts: PromptSet, target: str, layer_index: int, config: BakeConfig,
        inputs: BlockInputs | None = None,
    ) -> BakeData:
        prompts.check_domain(target)
        others = [d for d in prompts.harmful_domains if d != target]
        cap = config.max_per_group
        if cap is not None and config.adversarial_negatives:
            cap *= 2  # every original prompt comes with one variant
        train = {
            "target": prompts.part(target, "train"),
            "other": interleave([prompts.part(d, "train") for d in others], cap),
            "harmless": prompts.part(HARMLESS, "train", cap),
            "borderline": prompts.part(BORDERLINE, "train", cap) if BORDERLINE in prompts.by_domain else [],
        }
        val = {"target": prompts.part(target, "val")}
        for d in others:
            val[d] = prompts.part(d, "val", config.val_per_domain)
        val["harmless"] = prompts.part(HARMLESS, "val", 2 * config.val_per_domain)
        if BORDERLINE in prompts.by_domain:
            val["borderline"] = prompts.part(BORDERLINE, "val", 2 * config.val_per_domain)
        needed = list(dict.fromkeys(p for group in (*train.values(), *val.values()) for p in group))
        if inputs is None or inputs.layer_index != layer_index:
            inputs = capture_block_inputs(model, needed, layer_index, desc=f"block {layer_index} inputs")
        else:  # reuse what another bake at this block captured; run the prefix only for new prompts
            have = set(inputs.prompts)
            missing = [p for p in needed if p not in have]
            if missing:
                inputs = inputs + capture_block_inputs(model, missing, layer_index, desc=f"block {layer_index} inputs")
        return BakeData(train, val, inputs)


def interleave(lists: Sequence[list[str]], cap: int | None) -> list[str]:
    """Round-robin over ``lists`` (so a cap keeps every domain represented)."""
    out: list[str] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out[:cap] if cap is not None else out


# ---------------------------------------------------------------------- validation
def validation_metrics(
    logprobs: torch.Tensor, base_logprobs: torch.Tensor, groups: dict[str, slice], refusal_ids: Sequence[int],
    margin: bool = False,
) -> dict:
    """First-token metrics of an adapted block against the unadapted one on validation prompts.

    Returns a dict with ``p_target`` (mean refusal-token mass on target prompts), ``retain`` (per other
    harmful domain, adapted / vanilla mass), ``retain_mean``, ``retain_min``, ``kl_harmless``,
    ``borderline_up`` (increase of refusal mass) and ``selectivity`` (higher is better). With ``margin``
    (a bake with ``other_scale > 0``, which raises refusal elsewhere by design) retention above 1 earns nothing
    in the selectivity and borderline over-refusal counts twice.
    """
    p1 = torch.sigmoid(refusal_scores(logprobs, refusal_ids))
    p0 = torch.sigmoid(refusal_scores(base_logprobs, refusal_ids))
    out: dict = {}
    t = groups["target"]
    out["p_target"] = float(p1[t].mean())
    out["p_target_base"] = float(p0[t].mean())
    retain = {}
    for name, sl in groups.items():
        if name in ("target", "harmless", "borderline"):
            continue
        retain[name] = float(p1[sl].mean() / p0[sl].mean().clamp_min(1e-6))
    out["retain"] = retain
    out["retain_mean"] = sum(retain.values()) / len(retain) if retain else 1.0
    out["retain_min"] = min(retain.values()) if retain else 1.0
    if "harmless" in groups:
        h = groups["harmless"]
        out["kl_harmless"] = float(first_token_kl(base_logprobs[h], logprobs[h]).mean())
    else:
        out["kl_harmless"] = 0.0
    if "borderline" in groups:
        b = groups["borderline"]
        out["borderline_up"] = float((p1[b] - p0[b]).mean())
    else:
        out["borderline_up"] = 0.0
    bypass = out["p_target"] / max(out["p_target_base"], 1e-6)
    kept = sum(min(r, 1.0) for r in retain.values()) / len(retain) if margin and retain else out["retain_mean"]
    out["selectivity"] = (
        0.5 * (kept + min(out["retain_min"] / 0.85, 1.0))
        - bypass
        - 2.0 * max(0.0, out["kl_harmless"] - 0.05)
        - (2.0 if margin else 1.0) * max(0.0, out["borderline_up"])
    )
    return out


def default_refusal_ids(model: ChatModel) -> list[int]:
    """The opener-based refusal token set (no generation needed)."""
    return sorted(opener_tokens(model.tokenizer))
