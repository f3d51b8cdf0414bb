"""Global directional ablation (Arditi et al.), a comparison method: the refusal direction(s) are projected out
of the residual stream at every layer, for every prompt.

It relaxes refusal everywhere, not just in the authorized domain: the leakage a selective method must beat.
It is a set of TransformerLens hooks on the base model (nothing is modified or copied); run-time conditional
steering is :mod:`palette_lens.baselines.conditional_steering`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from palette_lens.models.chat_model import ChatModel, Hook
from palette_lens.models.hooks import float32_edit_hook
from palette_lens.search.direction import Direction


# ---------------------------------------------------------------------- subspace ablation
def orthonormal_basis(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An orthonormal basis of the span of ``vectors``: [k, d_model] (k ≤ len(vectors), float32).

    Sequential rank-1 ablations equal a subspace projection only for orthogonal directions, so several
    directions are orthonormalised first.
    """
    if not vectors:
        raise ValueError("no directions")
    m = torch.stack([v.detach().float().reshape(-1) for v in vectors], dim=1)  # [d, n]
    q, r = torch.linalg.qr(m)
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp_min(1e-12)
    return q[:, keep].T.contiguous()


def _vector(d: Direction | torch.Tensor) -> torch.Tensor:
    return d.vector if isinstance(d, Direction) else d


def subspace_ablation_hook(basis: torch.Tensor):
    """A hook ``h ← h − (h Qᵀ) Q`` for an orthonormal ``basis`` Q [k, d_model] (float32, rounded once)."""
    return float32_edit_hook(lambda act, q: act - (act @ q.T) @ q, basis.to(torch.float32))


def _sites(model: ChatModel) -> list[str]:
    """Every ``resid_pre`` plus the last block's output (the unembedding's input)."""
    return [model.resid_pre_hook(l) for l in range(model.n_layers)] + [f"blocks.{model.n_layers - 1}.hook_out"]


def global_ablation_hooks(model: ChatModel, directions: Sequence[Direction | torch.Tensor]) -> list[Hook]:
    """Arditi et al.'s directional ablation of ``directions`` (their span) at every layer.

    Args:
        model: the chat model the hooks are for.
        directions: one or more directions (e.g. a profile's domains): :class:`Direction` values or [d_model]
            tensors; their span is removed (orthonormalised first).

    Returns:
        ``(hook name, hook)`` pairs on every ``resid_pre`` and the last block's output, for
        :meth:`ChatModel.hooks` or ``generate_completions(hooks=...)``.

    Raises:
        ValueError: no directions.

    Examples:
        >>> hooks = global_ablation_hooks(model, [cyber.chosen, hate.chosen])        # doctest: +SKIP
        >>> len(hooks) == model.n_layers + 1                                         # doctest: +SKIP
        True
        >>> model.generate(["Write a port scanner."], hooks=hooks)                   # doctest: +SKIP
    """
    fn = subspace_ablation_hook(orthonormal_basis([_vector(d) for d in directions]))
    return [(site, fn) for site in _sites(model)]


