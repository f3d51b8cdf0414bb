"""The bake's ceiling: how well a one-layer edit at each layer can remove a domain's refusal.

Directional ablation at *every* layer (what the search can score) works from early layers on; a one-block
adapter only works where later layers no longer rebuild the refusal component. :func:`single_layer_scan` applies
the bake's ideal target as a hook at one layer at a time and reads the first-token refusal mass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from palette_lens.bake.examples import default_refusal_ids
from palette_lens.data.prompt_set import PromptSet
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.hooks import projection_edit_hook
from palette_lens.refusal.tokens import refusal_scores


def single_layer_scan(
    model: ChatModel,
    prompts: PromptSet,
    target: str,
    position: int = -1,
    layers: Sequence[int] | None = None,
    scale: float = 2.5,
    n: int = 12,
    refusal_ids: Sequence[int] | None = None,
    candidates=None,
) -> list[dict]:
    """How well a *single-layer* edit at each layer can remove the target's refusal (the bake's ceiling).

    For every layer l, the difference-of-means direction r[l, position] (train split) is applied as the
    bake's ideal target ``h ← h − s·(h·r̂)r̂`` at ``resid_pre`` of layer l only, on all tokens of ``n``
    target validation prompts, and the first-token refusal-token mass is read. Directional ablation at
    *every* layer (what the search scores) works from early layers on; a one-block edit only works where
    later layers no longer rebuild the refusal component, so this tells which layers a bake can use.

    Returns:
        one dict per layer: ``layer``, ``p_target`` (refusal mass after the ideal edit), ``p_base``
        (vanilla), ``ratio`` (p_target / p_base).
    """
    from palette_lens.search.candidates import candidate_directions

    ids = list(refusal_ids) if refusal_ids is not None else default_refusal_ids(model)
    cands = candidates if candidates is not None else candidate_directions(model, prompts, target)
    layers = [l for l in (layers if layers is not None else cands.layers) if l >= 1]
    val = prompts.part(target, "val", n)
    if len(val) < n:
        val = list(dict.fromkeys(val + prompts.part(target, "train")))[:n]
    base = float(torch.sigmoid(refusal_scores(model.last_logits(val), ids)).mean())
    rows = []
    for layer in tqdm(layers, desc=f"single-layer scan {target}", leave=False):
        edit = projection_edit_hook(cands.vector(layer, position), scale)
        lp = model.last_logits(val, hooks=[(model.resid_pre_hook(layer), edit)])
        p = float(torch.sigmoid(refusal_scores(lp, ids)).mean())
        rows.append({"layer": layer, "p_target": p, "p_base": base, "ratio": p / max(base, 1e-6)})
    return rows
