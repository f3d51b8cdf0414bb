"""How the adapters of a profile interact: cosine of their weight deltas on shared modules, and the leakage matrix (profile × domain refusal)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from palette_lens.adapters.baked import BakedAdapter


# ---------------------------------------------------------------------- interference
def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    den = a.norm() * b.norm()
    return float(a @ b / den) if den > 0 else 0.0


def interference(adapters: Sequence[BakedAdapter]) -> list[dict]:
    """Pairwise interference between adapters.

    For each pair: the blocks they sit on, the modules they share, the cosine between their ΔW per shared
    module and over all shared modules together (0 when they share none: such deltas superpose exactly),
    and the cosine between their baked directions (when both are known).

    Args:
        adapters: the adapters to compare (any number; every pair is reported).

    Returns:
        one dict per pair: ``a``, ``b``, ``blocks``, ``shared_modules``, ``cosine`` (all shared modules
        together, None when none are shared), ``cosine_by_module``, ``direction_cosine``.

    Examples:
        >>> rows = interference([adapters["cyber"], adapters["hate"]])            # doctest: +SKIP
        >>> rows[0]["blocks"], rows[0]["cosine"]                                  # doctest: +SKIP
        ([13, 13], 0.04)
    """
    out = []
    deltas = [a.deltas() for a in adapters]
    for i, j in itertools.combinations(range(len(adapters)), 2):
        a, b = adapters[i], adapters[j]
        shared = sorted(set(deltas[i]) & set(deltas[j]))
        by_module = {n: _cos(deltas[i][n], deltas[j][n]) for n in shared}
        overall = None
        if shared:
            overall = _cos(torch.cat([deltas[i][n].reshape(-1) for n in shared]),
                           torch.cat([deltas[j][n].reshape(-1) for n in shared]))
        dir_cos = None
        if a.direction is not None and b.direction is not None:
            dir_cos = _cos(a.direction, b.direction)
        out.append({
            "a": a.domain, "b": b.domain, "blocks": [a.layer_index, b.layer_index],
            "shared_modules": len(shared), "cosine": overall, "cosine_by_module": by_module,
            "direction_cosine": dir_cos,
        })
    return out


def leakage_matrix(
    rates: Mapping[str, Mapping[str, float]], domains: Sequence[str]
) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Profile × domain refusal-rate matrix.

    Args:
        rates: profile (or variant) name → domain → refusal rate.
        domains: the column order.

    Returns:
        (row names, column names, matrix with None where a rate is missing).

    Examples:
        >>> rates = {"vanilla": {"cyber": 0.9, "bio": 0.95}, "cyber": {"cyber": 0.1}}
        >>> leakage_matrix(rates, ["cyber", "bio"])
        (['vanilla', 'cyber'], ['cyber', 'bio'], [[0.9, 0.95], [0.1, None]])
    """
    rows = list(rates)
    matrix = [[rates[r].get(d) for d in domains] for r in rows]
    return rows, list(domains), matrix
