"""The bake's training targets, per-token losses, loss masks and hard-negative weights (pure tensor functions)."""

from __future__ import annotations

from typing import Literal

import torch

TargetMode = Literal["neutral", "reinforce"]
LossKind = Literal["cosine", "rel_mse"]


def block_targets(
    h: torch.Tensor,
    unit: torch.Tensor,
    is_target: torch.Tensor,
    scale: float,
    mode: TargetMode,
    other_scale: float = 0.0,
    is_other: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training targets for the block's output.

    Args:
        h: [batch, seq, d_model] frozen block outputs.
        unit: [d_model] r̂.
        is_target: [batch] bool, True for target-domain prompts.
        scale: s.
        mode: "neutral" or "reinforce" (what non-target prompts get).
        other_scale: under "neutral", rows marked ``is_other`` (non-target *harmful* prompts) get
            ``h + other_scale·(h·r̂)r̂`` (a small safety margin; harmless and borderline rows keep ``h``).
        is_other: [batch] bool, the non-target harmful rows (needed when ``other_scale`` is not 0).

    Returns:
        [batch, seq, d_model]: ``h − s·(h·r̂)r̂`` for target rows, ``h`` or ``h + s·(h·r̂)r̂`` for the others.
    """
    proj = (h @ unit).unsqueeze(-1) * unit  # [b, s, d]
    coef = torch.where(is_target, -scale, scale if mode == "reinforce" else 0.0).to(h.dtype)
    if mode == "neutral" and other_scale:
        if is_other is None:
            raise ValueError("other_scale needs is_other")
        coef = torch.where(is_other & ~is_target, torch.tensor(other_scale, dtype=h.dtype), coef)
    return h + coef[:, None, None] * proj


def shift_along(h: torch.Tensor, unit: torch.Tensor, coef: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``h + c·(h·r̂) r̂`` on the marked tokens: h [batch, seq, d], unit [d], coef [batch], tokens [batch, seq]."""
    proj = (h @ unit).unsqueeze(-1) * unit
    return h + (coef[:, None] * tokens.to(h.dtype)).unsqueeze(-1) * proj


def token_losses(pred: torch.Tensor, target: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """Per-token loss: [batch, seq, d] × 2 → [batch, seq]."""
    if kind == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-6)
    if kind == "rel_mse":
        return (pred - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp_min(1e-6)
    raise ValueError(f"unknown loss {kind!r}")


def token_mask(mask: torch.Tensor, n_prefix: int, n_post: int, scope: str) -> torch.Tensor:
    """Which tokens the loss counts: [batch, seq] (float), for a left-padded ``mask``.

    "user": real tokens after the shared template prefix; "post": the last ``n_post`` tokens; "all": every
    real token.
    """
    real = mask.float()
    if scope == "all":
        return real
    idx = mask.long().cumsum(-1) - 1  # position within the real tokens
    if scope == "user":
        return real * (idx >= n_prefix).float()
    if scope == "post":
        length = mask.long().sum(-1, keepdim=True)
        return real * (idx >= length - n_post).float()
    raise ValueError(f"unknown token scope {scope!r}")


def hard_negative_weights(
    outputs: torch.Tensor, is_target: torch.Tensor, frac: float, weight: float
) -> torch.Tensor:
    """Sampling weights: non-target prompts whose (centred) output is most aligned with the target mean get ``weight``.

    Args:
        outputs: [n, d_model] block outputs at the direction's position.
        is_target: [n] bool.

    Returns:
        [n] weights (1 for ordinary prompts and for target prompts).
    """
    w = torch.ones(outputs.shape[0])
    others = (~is_target).nonzero().flatten()
    if frac <= 0 or weight == 1.0 or len(others) == 0 or not is_target.any():
        return w
    centre = outputs.mean(0)
    target_dir = outputs[is_target].mean(0) - centre
    sim = torch.nn.functional.cosine_similarity(outputs[others] - centre, target_dir[None], dim=-1)
    k = max(1, round(frac * len(others)))
    hard = others[sim.topk(k).indices]
    w[hard] = weight
    return w
