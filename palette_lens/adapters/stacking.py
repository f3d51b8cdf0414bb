"""Stacking LoRA factors: one set of factors whose ΔW is the sum of several adapters' ΔW (ranks concatenated).

For the adapters that adapt a module, ``A = [A₁; A₂; ...]`` (rows) and ``B = [s₁B₁, s₂B₂, ...]`` (columns,
each scaled by its adapter's ``alpha / r``), so ``B·A = Σ sᵢBᵢAᵢ`` with scaling 1. Used to fold a bake's
refinement round into its adapter and to write a whole profile as one PEFT adapter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from palette_lens.adapters.baked import BakedAdapter
from palette_lens.errors import PaletteError


def stack_factors(
    adapters: Sequence[BakedAdapter], rank: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """LoRA factors (scaling 1) whose ΔW per module is the sum of the adapters' ΔW on that module.

    Adapters on different blocks keep their own modules; on a shared module their ranks are stacked in the
    order given. With ``rank``, every module's factors are padded with zero rows of A and zero columns of B
    up to ``rank`` (the padding adds nothing to ΔW).

    Args:
        adapters: the adapters (factors float32 on the CPU, as :class:`BakedAdapter` keeps them).
        rank: pad every module to this rank (at least the largest stacked rank); ``None`` pads nothing.

    Returns:
        ``(lora_A, lora_B)``: plain HF module name → A [r, in_features] and B [out_features, r] (float32),
        modules sorted by name; apply them with scaling 1 (``alpha = r``).

    Raises:
        PaletteError: no adapters, factors of one module whose shapes disagree, or ``rank`` smaller than a
            module's stacked rank.

    Examples:
        >>> name = "model.layers.3.mlp.down_proj"
        >>> one = BakedAdapter(3, {name: torch.ones(2, 8)}, {name: torch.ones(4, 2)}, rank=2, alpha=4.0)
        >>> two = BakedAdapter(3, {name: torch.ones(4, 8)}, {name: torch.ones(4, 4)}, rank=4, alpha=4.0)
        >>> a, b = stack_factors([one, two], rank=8)
        >>> tuple(a[name].shape), tuple(b[name].shape)
        ((8, 8), (4, 8))
        >>> bool(torch.allclose(b[name] @ a[name], one.deltas()[name] + two.deltas()[name]))
        True
    """
    if not adapters:
        raise PaletteError("nothing to stack: no adapters")
    lora_a: dict[str, torch.Tensor] = {}
    lora_b: dict[str, torch.Tensor] = {}
    for name in sorted({n for a in adapters for n in a.module_names}):
        parts = [a for a in adapters if name in a.lora_A]
        shapes = {(a.lora_B[name].shape[0], a.lora_A[name].shape[1]) for a in parts}
        if len(shapes) > 1:
            raise PaletteError(f"cannot stack adapters of module {name!r}: their shapes {sorted(shapes)} differ")
        a_rows = torch.cat([a.lora_A[name].float() for a in parts], dim=0)
        b_cols = torch.cat([a.scaling * a.lora_B[name].float() for a in parts], dim=1)
        if rank is not None:
            extra = rank - a_rows.shape[0]
            if extra < 0:
                raise PaletteError(f"module {name!r} has stacked rank {a_rows.shape[0]}, more than rank {rank}")
            a_rows = torch.cat([a_rows, a_rows.new_zeros(extra, a_rows.shape[1])], dim=0)
            b_cols = torch.cat([b_cols, b_cols.new_zeros(b_cols.shape[0], extra)], dim=1)
        lora_a[name], lora_b[name] = a_rows, b_cols
    return lora_a, lora_b
