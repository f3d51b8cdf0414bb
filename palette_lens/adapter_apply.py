"""Applying baked adapters to a model: merged copies, a new :class:`ChatModel`, or in place for a block.

Applying adapters never mutates the caller's model unless asked:
- :func:`merged_hf_model` returns a new plain HF model with ``W + Σ ΔW`` in the adapted modules;
- :func:`apply_adapters` wraps that in a new :class:`ChatModel`;
- :func:`adapters_applied` is a context manager that adds the deltas in place and restores the exact
  original weights on exit (cheap; TransformerLens hooks keep working).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .block_inputs import plain_tensor
from .models import ChatModel

if TYPE_CHECKING:  # pragma: no cover
    from .adapters import BakedAdapter


def sum_deltas(adapters: Iterable[BakedAdapter]) -> dict[str, torch.Tensor]:
    """Exact sum of the adapters' ΔW per module name: name → [out, in] (float32)."""
    total: dict[str, torch.Tensor] = {}
    for a in adapters:
        for n, d in a.deltas().items():
            total[n] = total[n] + d if n in total else d.clone()
    return total


def plain_hf_model(model: ChatModel, share_weights: bool = True) -> Any:
    """A new plain Hugging Face model (no bridge wrappers) with the weights of ``model``.

    Args:
        model: the chat model (not modified).
        share_weights: reuse the original tensors (no memory cost; do not train the copy in place).
            ``False`` clones every tensor.
    """
    hf = model.hf_model
    config = hf.config
    with torch.device("meta"):
        fresh = type(hf)(config)
    state = {}
    for key in fresh.state_dict():
        t = plain_tensor(hf, key).detach()
        state[key] = t if share_weights else t.clone()
    fresh.load_state_dict(state, strict=True, assign=True)
    _fill_meta_tensors(fresh, hf)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.requires_grad_(False)
    if getattr(hf, "generation_config", None) is not None:
        fresh.generation_config = hf.generation_config
    return fresh.eval()


def _fill_meta_tensors(fresh: torch.nn.Module, wrapped: torch.nn.Module) -> None:
    """Copy non-persistent buffers and tensor attributes (e.g. RoPE ``inv_freq``) left on the meta device."""
    for mod_name, module in fresh.named_modules():
        for attr, value in list(vars(module).items()) + list(module._buffers.items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                source = plain_tensor(wrapped, f"{mod_name}.{attr}" if mod_name else attr).detach().clone()
                if attr in module._buffers:
                    module._buffers[attr] = source
                else:
                    setattr(module, attr, source)


def merged_hf_model(model: ChatModel, adapters: Sequence[BakedAdapter], share_weights: bool = True) -> Any:
    """A new plain HF model with ``W + Σ ΔW`` in every adapted module (the caller's model is untouched).

    Unadapted tensors are shared with ``model`` unless ``share_weights`` is False.
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
    """
    from .models import wrap_model

    merged = merged_hf_model(model, adapters)
    label = name or f"{model.name} + " + "+".join(a.domain or f"block{a.layer_index}" for a in adapters)
    adapter_name = getattr(model.bridge.cfg, "model_name", None)
    return wrap_model(
        merged, _tokenizer_copy(model.tokenizer), label, source=model.source, system_prompt=model.system_prompt,
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
    """
    for a in adapters:
        a.check_base(model)
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, delta in sum_deltas(adapters).items():
                w = plain_tensor(model.hf_model, f"{name}.weight")
                saved[name] = w.detach().clone()
                w.add_(delta.to(device=w.device, dtype=w.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                plain_tensor(model.hf_model, f"{name}.weight").copy_(original)


def _tokenizer_copy(tokenizer: Any) -> Any:
    """A copy of an already-bridged tokenizer that TransformerLens can set up again without reloading it."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", ""))
    if tok.bos_token is not None:
        tok.init_kwargs["add_bos_token"] = bool(getattr(tok, "add_bos_token", False)) or True
    return tok
