"""Pareto front, trade-off selection and the search's choice rule over candidate objectives (pure functions, no model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from palette_lens.errors import PaletteError

RetainKind = Literal["causal", "sep", "both"]


def dominates(a: np.ndarray, b: np.ndarray, maximize: Sequence[bool]) -> bool:
    """True when ``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    sign = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
    a, b = np.asarray(a, dtype=float) * sign, np.asarray(b, dtype=float) * sign
    return bool(np.all(a >= b) and np.any(a > b))


def pareto_front(values: np.ndarray | Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated rows of ``values`` (in increasing order).

    Args:
        values: [n_points, n_objectives]; NaN rows are never on the front and never dominate.
        maximize: per objective, True when larger is better.

    Returns:
        Sorted indices of the points that no other point dominates. Identical points do not dominate
        each other, so duplicates on the front are all kept.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be 2-D [n_points, n_objectives], got shape {v.shape}")
    if v.shape[1] != len(maximize):
        raise ValueError(f"{v.shape[1]} objectives but {len(maximize)} maximize flags")
    sign = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
    s = v * sign  # now larger is better everywhere
    valid = ~np.isnan(s).any(axis=1)
    idx = np.flatnonzero(valid)
    front = []
    for i in idx:
        others = s[idx]
        dominated = np.any(np.all(others >= s[i], axis=1) & np.any(others > s[i], axis=1))
        if not dominated:
            front.append(int(i))
    return front


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (a constant vector maps to zeros)."""
    x = np.asarray(x, dtype=float)
    lo, hi = np.nanmin(x), np.nanmax(x)
    return np.zeros_like(x) if not np.isfinite(hi - lo) or hi - lo <= 0 else (x - lo) / (hi - lo)


def tradeoff_scores(bypass: np.ndarray, retain: np.ndarray, alpha: float) -> np.ndarray:
    """``α · bypass' − (1 − α) · retain'`` with both objectives min-max scaled over the given points.

    Lower is better: low (strong) bypass and high retention. ``α = 1`` only cares about bypass,
    ``α = 0`` only about retention.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha * minmax(bypass) - (1.0 - alpha) * minmax(retain)


def select_tradeoff(
    bypass: np.ndarray, retain: np.ndarray, alpha: float, tiebreak: np.ndarray | None = None
) -> int:
    """Index minimising :func:`tradeoff_scores` (ties broken by the smaller ``tiebreak``, then index)."""
    scores = tradeoff_scores(bypass, retain, alpha)
    tb = np.zeros_like(scores) if tiebreak is None else np.asarray(tiebreak, dtype=float)
    order = np.lexsort((np.arange(len(scores)), tb, np.round(scores, 12)))
    return int(order[0])


# --------------------------------------------------------------------- the search's selection rule
def retention_scores(rows: Sequence[dict], kind: RetainKind) -> np.ndarray:
    """The selection's retention objective for evaluated rows (higher is better)."""
    causal = np.array([r["retain_N"] for r in rows], dtype=float)
    sep = np.array([r["sep_N"] if r.get("sep_N") is not None else np.nan for r in rows], dtype=float)
    if kind == "causal" or np.isnan(sep).all():
        return causal
    if kind == "sep":
        return sep
    return 0.5 * (minmax(causal) + minmax(np.nan_to_num(sep, nan=np.nanmin(sep))))


def choose(rows: Sequence[dict], alpha: float, kl_max: float, bypass_max: float | None) -> tuple[int, str | None]:
    """Index into ``rows`` (evaluated candidates with a ``retain`` key) picked by the selection rule.

    Filters are relaxed in order when nothing passes: first ``bypass_max``, then ``kl_max`` (then the
    smallest KL decides). Ties of the trade-off score go to the stronger bypass.

    Returns:
        (index, fallback description or None).
    """
    if not rows:
        raise PaletteError("no candidate was evaluated; nothing to choose from")
    kl = np.array([r["kl_H"] for r in rows], dtype=float)
    by = np.array([r["bypass_T"] for r in rows], dtype=float)
    ok_kl = kl <= kl_max
    ok_by = np.ones_like(ok_kl) if bypass_max is None else by <= bypass_max
    for mask, fallback in (
        (ok_kl & ok_by, None),
        (ok_kl, f"no candidate with kl_H <= {kl_max} reaches bypass_T <= {bypass_max}; bypass constraint dropped"),
    ):
        idx = np.flatnonzero(mask)
        if len(idx):
            sub = [rows[i] for i in idx]
            j = select_tradeoff(
                np.array([r["bypass_T"] for r in sub]), np.array([r["retain"] for r in sub]), alpha, by[idx]
            )
            return int(idx[j]), fallback
    best = int(np.nanargmin(kl))
    return best, f"no candidate has kl_H <= {kl_max}; took the smallest KL ({kl[best]:.3f})"
