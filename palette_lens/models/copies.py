"""Copies of a loaded model: a plain Hugging Face model without bridge wrappers, and a reusable tokenizer.

Copies share the original weight tensors unless asked otherwise, so they cost no memory; the caller's
model is never modified.
"""

from __future__ import annotations

from typing import Any

import torch

from palette_lens.models.blocks import plain_tensor
from palette_lens.models.chat_model import ChatModel


def plain_hf_model(model: ChatModel, share_weights: bool = True) -> Any:
    """A new plain Hugging Face model (no bridge wrappers) with the weights of ``model``.

    A model dispatched by accelerate (``device_map``) gives a copy dispatched the same way: every module
    computes where the original's does.

    Args:
        model: the chat model (not modified).
        share_weights: reuse the original tensors (no memory cost; do not train the copy in place).
            ``False`` clones every tensor.

    Examples:
        >>> from palette_lens.models.tiny import tiny_chat_model
        >>> model = tiny_chat_model()
        >>> copy = plain_hf_model(model)
        >>> copy.model.embed_tokens.weight.data_ptr() == model.hf_model.model.embed_tokens.weight.data_ptr()
        True
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
    fill_meta_tensors(fresh, hf)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.requires_grad_(False)
    if getattr(hf, "generation_config", None) is not None:
        fresh.generation_config = hf.generation_config
    device_map = getattr(hf, "hf_device_map", None)
    if device_map and _is_dispatched(hf):
        from accelerate import dispatch_model

        fresh = dispatch_model(fresh, device_map=dict(device_map), force_hooks=True)
    return fresh.eval()


def _is_dispatched(hf: torch.nn.Module) -> bool:
    """Whether accelerate attached device hooks to some module of ``hf``."""
    return any(hasattr(m, "_hf_hook") for m in hf.modules())


def fill_meta_tensors(fresh: torch.nn.Module, wrapped: torch.nn.Module) -> None:
    """Copy non-persistent buffers and tensor attributes (e.g. RoPE ``inv_freq``) left on the meta device."""
    for mod_name, module in fresh.named_modules():
        for attr, value in list(vars(module).items()) + list(module._buffers.items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                source = plain_tensor(wrapped, f"{mod_name}.{attr}" if mod_name else attr).detach().clone()
                if attr in module._buffers:
                    module._buffers[attr] = source
                else:
                    setattr(module, attr, source)


def tokenizer_copy(tokenizer: Any) -> Any:
    """A copy of an already-bridged tokenizer that TransformerLens can set up again without reloading it."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", ""))
    if tok.bos_token is not None:
        tok.init_kwargs["add_bos_token"] = bool(getattr(tok, "add_bos_token", False)) or True
    return tok
