"""Batched residual-stream collection (``resid_pre`` of every layer at post-instruction positions).

Vectors are read through TransformerLens hooks; means are accumulated in float64. An optional disk
cache (safetensors with a sha256 of its content) is keyed by the model's cache key, prompts, layers and
positions; a damaged entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from palette_lens.models.chat_model import ChatModel
from palette_lens.models.hooks import StopForward, stop_forward_hook
from palette_lens.util.integrity import load_checked, save_checked
from palette_lens.util.paths import cache_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Residuals:
    """Residual vectors of a prompt set.

    Attributes:
        vectors: [n_prompts, n_layers, n_positions, d_model] per-prompt ``resid_pre`` (float32).
        layers: the layers collected (index 1 of ``vectors``).
        positions: negative post-instruction offsets (index 2 of ``vectors``).

    ``mean()`` is [n_layers, n_positions, d_model] (float64); ``at(layer, position)`` is [n_prompts, d_model];
    ``len()`` is n_prompts.

    Examples:
        >>> res = Residuals(torch.ones(4, 2, 3, 8), layers=(5, 6), positions=(-3, -2, -1))
        >>> len(res), tuple(res.mean().shape), tuple(res.at(6, -1).shape)
        (4, (2, 3, 8), (4, 8))
    """

    vectors: torch.Tensor
    layers: tuple[int, ...]
    positions: tuple[int, ...]

    def mean(self) -> torch.Tensor:
        """Mean over prompts in float64: [n_layers, n_positions, d_model]."""
        return self.vectors.to(torch.float64).mean(0)

    def at(self, layer: int, position: int) -> torch.Tensor:
        """Per-prompt vectors at one (layer, position): [n_prompts, d_model]."""
        return self.vectors[:, self.layers.index(layer), self.positions.index(position)]

    def __len__(self) -> int:
        return self.vectors.shape[0]


def _cache_key(model: ChatModel, prompts: Sequence[str], layers: Sequence[int], positions: Sequence[int]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([model.cache_key, model.system_prompt, list(layers), list(positions)]).encode())
    for p in prompts:
        digest.update(p.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


@torch.no_grad()
def collect_residuals(
    model: ChatModel,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int = 32,
    cache: bool | str | Path = False,
    desc: str | None = "residuals",
) -> Residuals:
    """Collect ``resid_pre`` at ``layers`` × ``positions`` for every prompt.

    Args:
        model: the chat model.
        prompts: user prompts (rendered with the chat template here).
        layers: layers to read (default: all).
        positions: negative offsets among the post-instruction tokens (default: all of them).
        batch_size: prompts per forward pass.
        cache: False, True (user cache folder) or a folder: reuse results for identical inputs.
        desc: progress-bar label (None hides it).

    Returns:
        :class:`Residuals` with vectors [n_prompts, n_layers, n_positions, d_model] (float32, CPU).

    Examples:
        >>> texts = ["Write a haiku.", "Sort a list."]
        >>> res = collect_residuals(model, texts, layers=[10, 12])         # doctest: +SKIP
        >>> res.vectors.shape                                              # doctest: +SKIP
        torch.Size([2, 2, 5, 896])
    """
    layers = tuple(range(model.n_layers)) if layers is None else tuple(layers)
    positions = tuple(model.positions) if positions is None else tuple(positions)
    cache_file = None
    if cache:
        folder = cache_root() / "activations" if cache is True else Path(cache)
        cache_file = folder / f"{_cache_key(model, prompts, layers, positions)}.safetensors"
        if cache_file.is_file():
            cached = load_checked(cache_file)  # None when unreadable, truncated or altered: recomputed
            want = (len(prompts), len(layers), len(positions), model.d_model)
            if cached is not None and tuple(cached[0].get("vectors", torch.empty(0)).shape) == want:
                return Residuals(cached[0]["vectors"], layers, positions)
            log.warning("activation cache %s unusable; recomputing", cache_file)
    pos_index = torch.tensor(positions)
    stop_at = max(layers) + 1
    chunks: list[torch.Tensor] = []
    for batch in model.batches(list(prompts), batch_size, desc):
        enc = model.encode(batch)
        out = torch.empty(len(batch), len(layers), len(positions), model.d_model)

        def grabber(slot: int):
            def grab(act: torch.Tensor, hook=None) -> torch.Tensor:  # noqa: ARG001
                out[:, slot] = act[:, pos_index].detach().float().cpu()
                return act

            return grab

        hooks = [(model.resid_pre_hook(l), grabber(i)) for i, l in enumerate(layers)]
        if stop_at < model.n_layers:
            hooks.append((model.resid_pre_hook(stop_at), stop_forward_hook))
        try:
            with model.hooks(hooks):
                model.decoder(**enc, use_cache=False)
        except StopForward:
            pass
        chunks.append(out)
    vectors = torch.cat(chunks) if chunks else torch.empty(0, len(layers), len(positions), model.d_model)
    if cache_file is not None:
        save_checked(cache_file, {"vectors": vectors})
    return Residuals(vectors, layers, positions)
