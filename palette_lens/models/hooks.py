"""Interventions on the residual stream as TransformerLens hooks, applied by scoped context managers.

The hooks act on every position they see, so they work during batched generation with the KV cache
(where each step feeds one new token). The context managers remove them on exit, also on exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from palette_lens.models.chat_model import ChatModel, Hook


def ablation_hook(direction: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A hook ``h ← h − (h·r̂) r̂`` for a [d_model] direction (normalised here).

    The projection is computed in float32 and the result rounded once to the activation's dtype, so a
    bfloat16 or float16 model keeps no more of the direction than that single rounding leaves.
    """
    unit = direction.to(torch.float32)
    unit = unit / unit.norm().clamp_min(1e-12)
    return float32_edit_hook(lambda act, r: act - (act @ r).unsqueeze(-1) * r, unit)


def float32_edit_hook(edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], vector: torch.Tensor
                  ) -> Callable[..., torch.Tensor]:
    """A TransformerLens hook returning ``edit(act, vector)`` computed in float32, rounded once to act's dtype.

    Args:
        edit: ``(act [..., d_model] float32, vector float32 on act's device) -> [..., d_model]``.
        vector: the float32 tensor ``edit`` combines with the activations (a direction, a basis, ...);
            it is moved once to each device the hook sees.

    Examples:
        >>> hook = float32_edit_hook(lambda act, v: act + v, torch.ones(4))
        >>> hook(torch.zeros(1, 2, 4, dtype=torch.bfloat16)).dtype
        torch.bfloat16
    """
    on_device: dict[torch.device, torch.Tensor] = {}

    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:  # noqa: ARG001 - TransformerLens signature
        if act.device not in on_device:
            on_device[act.device] = vector.to(act.device)
        return edit(act.to(torch.float32), on_device[act.device]).to(act.dtype)

    return hook


def projection_edit_hook(direction: torch.Tensor, scale: float) -> Callable[..., torch.Tensor]:
    """A hook ``h ← h − scale·(h·r̂) r̂`` (scale 1 is ablation; the bake's target uses scale s, e.g. 2.5).

    Computed in float32, rounded once to the activation's dtype.
    """
    unit = direction.to(torch.float32)
    unit = unit / unit.norm().clamp_min(1e-12)
    return float32_edit_hook(lambda act, r: act - scale * (act @ r).unsqueeze(-1) * r, unit)


def addition_hook(direction: torch.Tensor, coeff: float = 1.0) -> Callable[..., torch.Tensor]:
    """A hook ``h ← h + coeff · r`` (r as given, not normalised; added in float32, rounded once)."""
    return float32_edit_hook(lambda act, vec: act + vec, direction.to(torch.float32) * coeff)


def ablation_hooks(model: ChatModel, direction: torch.Tensor, layers: Sequence[int] | None = None) -> list[Hook]:
    """Hooks ablating ``direction`` from ``resid_pre`` of ``layers`` (default: every layer).

    Ablating at every ``resid_pre`` plus the final residual (the last block's output) removes the
    direction from every block's input and from the unembedding input, as in Arditi et al.

    Args:
        model: the chat model (for hook names and its number of layers).
        direction: [d_model] direction to remove (normalised here; any dtype or device).
        layers: blocks whose ``resid_pre`` is edited (default: every layer). The final residual is also
            edited when the last layer is among them.

    Returns:
        ``(hook name, hook function)`` pairs for :meth:`ChatModel.hooks` or ``ChatModel.generate(hooks=...)``.

    Examples:
        >>> hooks = ablation_hooks(model, found.chosen.vector)                   # doctest: +SKIP
        >>> model.generate(["How do I pick a lock?"], hooks=hooks)               # doctest: +SKIP
    """
    fn = ablation_hook(direction)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    hooks = [(model.resid_pre_hook(l), fn) for l in layers]
    if layers and max(layers) == model.n_layers - 1:
        hooks.append((f"blocks.{model.n_layers - 1}.hook_out", fn))
    return hooks


def addition_hooks(model: ChatModel, direction: torch.Tensor, layer: int, coeff: float = 1.0) -> list[Hook]:
    """Hooks adding ``coeff · direction`` to ``resid_pre`` of one ``layer``.

    Args:
        model: the chat model (for hook names).
        direction: [d_model] vector to add, used as given (not normalised).
        layer: the block whose ``resid_pre`` is edited (at every position).
        coeff: the multiplier of ``direction`` (negative values subtract it).

    Returns:
        One ``(hook name, hook function)`` pair in a list.

    Examples:
        >>> hooks = addition_hooks(model, found.chosen.vector, layer=12, coeff=-1.0)   # doctest: +SKIP
        >>> model.generate(["Write a port scanner."], hooks=hooks)                   # doctest: +SKIP
    """
    return [(model.resid_pre_hook(layer), addition_hook(direction, coeff))]


@contextmanager
def ablate(model: ChatModel, direction: torch.Tensor, layers: Sequence[int] | None = None) -> Iterator[None]:
    """Context manager: directional ablation at every layer (or ``layers``) while inside the block.

    The hooks are those of :func:`ablation_hooks`; they are removed on exit, also on exceptions.

    Args:
        model: the chat model.
        direction: [d_model] direction to remove (normalised here).
        layers: blocks whose ``resid_pre`` is edited (default: every layer).

    Examples:
        >>> with ablate(model, found.chosen.vector):                     # doctest: +SKIP
        ...     text = model.generate(["How do I pick a lock?"])          # doctest: +SKIP
    """
    with model.hooks(ablation_hooks(model, direction, layers)):
        yield


@contextmanager
def add(model: ChatModel, direction: torch.Tensor, layer: int, coeff: float = 1.0) -> Iterator[None]:
    """Context manager: activation addition at one layer while inside the block.

    The hooks are those of :func:`addition_hooks`; they are removed on exit, also on exceptions.

    Args:
        model: the chat model.
        direction: [d_model] vector to add (not normalised).
        layer: the block whose ``resid_pre`` is edited.
        coeff: the multiplier of ``direction``.

    Examples:
        >>> with add(model, found.chosen.vector, layer=12, coeff=1.5):   # doctest: +SKIP
        ...     text = model.generate(["Write a haiku."])                 # doctest: +SKIP
    """
    with model.hooks(addition_hooks(model, direction, layer, coeff)):
        yield


class StopForward(Exception):
    """Raised by :func:`stop_forward_hook` to end a forward pass once everything needed has been read."""


def stop_forward_hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:  # noqa: ARG001
    """A TransformerLens hook that ends the forward pass where it is attached (raises :class:`StopForward`).

    Examples:
        >>> hooks = [(model.resid_pre_hook(6), stop_forward_hook)]  # doctest: +SKIP
        >>> stopped_early(lambda: model.bridge.run_with_hooks(ids, fwd_hooks=hooks))  # doctest: +SKIP
    """
    raise StopForward


def stopped_early(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; its result, or None when a :class:`StopForward` ended it early."""
    try:
        return fn()
    except StopForward:
        return None
