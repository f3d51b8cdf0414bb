"""One refinement round of a bake: re-search the direction on the adapted model, train again, fold into one adapter.

A first adapter removes most of the target's refusal along the direction it was trained on; what refusal is
left may lie along a slightly different direction (another position, or the first direction as the adapted
model now reads it). :func:`refine` searches the target's direction again **on the adapted model**, restricted
to the adapter's layer so that the result stays a single-block edit, bakes a second LoRA on the same block *on
top of* the first (its targets are the adapted block's outputs, neutral elsewhere), and stacks both into one
adapter of rank ``r₁ + r₂``: ``ΔW = s₁·B₁A₁ + s₂·B₂A₂``, exactly the two applied together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from palette_lens.adapters.apply import apply_adapters
from palette_lens.adapters.baked import BakedAdapter
from palette_lens.adapters.stacking import stack_factors
from palette_lens.bake.config import BakeConfig
from palette_lens.bake.train import BakeResult, bake_direction
from palette_lens.data.prompt_set import PromptSet
from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.search.direction_search import search_direction
from palette_lens.search.result import SearchConfig, SearchResult

log = logging.getLogger(__name__)


@dataclass
class RefineResult:
    """What :func:`refine` returns.

    Attributes:
        adapter: the two rounds stacked into one adapter on the same block (rank r₁ + r₂).
        first: the adapter that was refined.
        search: the search on the adapted model (its ``chosen`` direction is the one baked in round two).
        second: the second round's bake (its adapter is relative to the adapted model).
    """

    adapter: BakedAdapter
    first: BakedAdapter
    search: SearchResult
    second: BakeResult


def stack_adapters(first: BakedAdapter, second: BakedAdapter, meta: dict[str, Any] | None = None) -> BakedAdapter:
    """One adapter whose delta is the sum of two adapters' deltas on the same block (ranks add up).

    Each B is scaled by its adapter's ``alpha / r`` and the result uses ``alpha = r`` (scaling 1), so
    ``ΔW = B₁'A₁ + B₂'A₂`` whatever the two scalings were
    (:func:`palette_lens.adapters.stacking.stack_factors`).
    """
    if first.layer_index != second.layer_index:
        raise PaletteError(f"cannot stack adapters of blocks {first.layer_index} and {second.layer_index}")
    if first.module_names != second.module_names:
        raise PaletteError("cannot stack adapters of different modules")
    lora_a, lora_b = stack_factors([first, second])
    rank = first.rank + second.rank
    return BakedAdapter(layer_index=first.layer_index, lora_A=lora_a, lora_B=lora_b, rank=rank, alpha=float(rank),
                        meta=dict(meta if meta is not None else first.meta), direction=first.direction)


def refine(
    model: ChatModel,
    adapter: BakedAdapter,
    prompts: PromptSet,
    config: BakeConfig | None = None,
    *,
    search_config: SearchConfig | None = None,
    progress: bool = True,
) -> RefineResult:
    """Refine ``adapter`` once: search on the adapted model at its layer, bake again on top, stack the two.

    Args:
        model: the base chat model (never modified).
        adapter: a baked adapter of ``model`` (:func:`palette_lens.bake.train.bake_direction`).
        prompts: the prompt set the first round used.
        config: bake settings of the second round (default: :class:`BakeConfig`'s; the margin fallback is off
            in it: the first round decided).
        search_config: settings of the search (its ``layers`` are set to the adapter's layer).
        progress: show progress bars.

    Returns:
        A ``RefineResult``: ``adapter`` is the stacked adapter (rank ``r₁ + r₂``, same block, the first
        round's ``direction``; the new layer/position are in ``meta["refined"]``), plus ``first``,
        ``search`` and ``second``.

    Raises:
        PaletteError: the adapter has no domain in its metadata.
        AdapterMismatchError: the adapter was baked on another base model.

    Examples:
        >>> refined = refine(model, baked.adapter, prompts)                  # doctest: +SKIP
        >>> refined.adapter.rank                                             # doctest: +SKIP
        16
        >>> refined.adapter.save("runs/demo/adapters/cyber-refined")         # doctest: +SKIP
    """
    adapter.check_base(model)
    target = adapter.domain
    if not target:
        raise PaletteError("the adapter has no domain in its metadata: nothing to refine")
    adapted = apply_adapters(model, [adapter], name=f"{model.name} + {target} adapter")
    cfg = replace(search_config or SearchConfig(), layers=(adapter.layer,))
    log.info("refine %s: searching again on the adapted model at layer %d", target, adapter.layer)
    found = search_direction(adapted, prompts, target, config=cfg, progress=progress)
    second = bake_direction(adapted, found.chosen, prompts, replace(config or BakeConfig(), margin_retry=0.0), progress=progress)
    meta = dict(adapter.meta)
    meta["refined"] = {
        "position": found.chosen.position,
        "layer": found.chosen.layer,
        "second_round": {"config": second.adapter.meta.get("config"), "best_step": second.adapter.meta.get("best_step"),
                         "metrics": second.adapter.meta.get("metrics")},
        "search": found.chosen_row,
        "first_rank": adapter.rank,
    }
    stacked = stack_adapters(adapter, second.adapter, meta)
    log.info("refine %s: stacked two rounds into one rank-%d adapter on block %d", target, stacked.rank,
             stacked.layer_index)
    return RefineResult(stacked, adapter, found, second)
