"""Applying baked adapters to a model: merged copies, a new :class:`ChatModel`, or in place for a block.

Applying adapters never mutates the caller's model unless asked:
- :func:`merged_hf_model` returns a new plain HF model with ``W + Σ ΔW`` in the adapted modules;
- :func:`apply_adapters` wraps that in a new :class:`ChatModel`;
- :func:`adapters_applied` is a context manager that adds the deltas in place and restores the exact
  original weights on exit (cheap; TransformerLens hooks keep working).

Every merge adds ``W + ΔW`` in float32 and rounds once to the weight's dtype. In bfloat16 that single
rounding still costs small deltas part of their size (bfloat16 keeps 8 significant bits of ``W``); where that
matters, keep the adapter unmerged (:func:`palette_lens.compose.profiles.runtime_profile`), whose LoRA path
runs in float32 factors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from palette_lens.models.blocks import plain_tensor
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.copies import plain_hf_model, tokenizer_copy

if TYPE_CHECKING:  # pragma: no cover
    from palette_lens.adapters.baked import BakedAdapter


def sum_deltas(adapters: Iterable[BakedAdapter]) -> dict[str, torch.Tensor]:
    """Exact sum of the adapters' ΔW per module name: name → [out, in] (float32, on the CPU).

    Adapters may come from different devices (a fresh bake on a GPU, a loaded one on the CPU); the sum is
    taken on the CPU in float32 and moved to each weight's device when it is applied.
    """
    total: dict[str, torch.Tensor] = {}
    for a in adapters:
        for n, d in a.deltas().items():
            d = d.detach().to(device="cpu", dtype=torch.float32)
            total[n] = total[n] + d if n in total else d.clone()
    return total


def merged_hf_model(model: ChatModel, adapters: Sequence[BakedAdapter], share_weights: bool = True) -> Any:
    """A new plain HF model with ``W + Σ ΔW`` in every adapted module (the caller's model is untouched).

    Unadapted tensors are shared with ``model`` unless ``share_weights`` is False.

    Args:
        model: the base chat model.
        adapters: baked adapters of this base model; their deltas are summed (one block or several).
        share_weights: share unadapted tensors with ``model`` (False: a full copy).

    Returns:
        A plain Hugging Face causal LM (no TransformerLens bridge), e.g. for ``save_pretrained`` or for
        ``ChatModel.generate(model=...)``.

    Raises:
        AdapterMismatchError: an adapter was baked on another base model.

    Examples:
        >>> hf = merged_hf_model(model, [cyber, bio])                        # doctest: +SKIP
        >>> hf.save_pretrained("merged-cyber-bio")                           # doctest: +SKIP
    """
    for a in adapters:
        a.check_base(model)
    merged = plain_hf_model(model, share_weights=share_weights)
    with torch.no_grad():
        for name, delta in sum_deltas(adapters).items():
            module = merged.get_submodule(name)
            w = module.weight
            module.weight = torch.nn.Parameter((w.float() + delta.to(w.device)).to(w.dtype), requires_grad=False)
    return merged


def apply_adapters(model: ChatModel, adapters: Sequence[BakedAdapter], name: str | None = None) -> ChatModel:
    """A new :class:`ChatModel` whose weights are ``model``'s plus the adapters' deltas (merged).

    The new model has its own TransformerBridge (hooks, residual collection, generation all work) and
    shares unadapted weights with ``model``.

    Args:
        model: the base chat model (left unchanged).
        adapters: baked adapters of this base model.
        name: the new model's name (default: ``"<model name> + <domain>+<domain>"``).

    Returns:
        A new :class:`ChatModel` with the merged weights.

    Raises:
        AdapterMismatchError: an adapter was baked on another base model.

    Examples:
        >>> cyber_model = apply_adapters(model, [load_adapter("runs/demo/adapters/cyber")])   # doctest: +SKIP
        >>> cyber_model.name                                                                 # doctest: +SKIP
        'Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, embedded) + cyber'
    """
    from palette_lens.models.loading import wrap_model

    merged = merged_hf_model(model, adapters)
    label = name or f"{model.name} + " + "+".join(a.domain or f"block{a.layer_index}" for a in adapters)
    adapter_name = getattr(model.bridge.cfg, "model_name", None)
    return wrap_model(
        merged, tokenizer_copy(model.tokenizer), label, source=model.source, system_prompt=model.system_prompt,
        adapter_name=adapter_name,
    )


def apply_adapter(model: ChatModel, adapter: BakedAdapter) -> ChatModel:
    """:func:`apply_adapters` for one adapter."""
    return apply_adapters(model, [adapter])


@contextmanager
def adapters_applied(model: ChatModel, adapters: Sequence[BakedAdapter]) -> Iterator[ChatModel]:
    """Add the adapters' deltas to ``model``'s weights in place for the duration of the block.

    The original weights are restored bit for bit on exit (also after an exception). Cheap: only the
    adapted modules are copied. Yields ``model`` itself.

    Args:
        model: the base chat model (modified inside the block only).
        adapters: baked adapters of this base model.

    Yields:
        ``model``, with the deltas added.

    Raises:
        AdapterMismatchError: an adapter was baked on another base model (checked before any change).

    Examples:
        >>> with adapters_applied(model, [adapter]) as m:                    # doctest: +SKIP
        ...     texts = m.generate(["Write a port scanner in Python."])      # doctest: +SKIP
    """
    for a in adapters:
        a.check_base(model)
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, delta in sum_deltas(adapters).items():
                w = plain_tensor(model.hf_model, f"{name}.weight")
                saved[name] = w.detach().clone()
                w.copy_((w.to(torch.float32) + delta.to(w.device)).to(w.dtype))  # in float32, rounded once
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                plain_tensor(model.hf_model, f"{name}.weight").copy_(original)
