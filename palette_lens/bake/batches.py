"""What one bake step trains on: a batch drawn by group and weight, and harmful rows shifted along r̂."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from palette_lens.bake.lora_block import LoraBlock
from palette_lens.bake.targets import shift_along, token_mask
from palette_lens.models.blocks import run_block

if TYPE_CHECKING:
    from palette_lens.bake.config import BakeConfig


def shifted_inputs(
    block: LoraBlock, rotary: torch.nn.Module, h_in: torch.Tensor, mask: torch.Tensor, h_out: torch.Tensor,
    unit: torch.Tensor, harmful: torch.Tensor, n_prefix: int, config: BakeConfig, gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a random share of the harmful rows' inputs along r̂ and recompute their frozen block outputs."""
    draws = torch.rand(harmful.shape[0], generator=gen)  # the CPU generator keeps bakes seeded on any device
    pick = harmful & (draws < config.input_shift).to(harmful.device)
    if not pick.any():
        return h_in, h_out
    low, high = config.input_shift_range
    shift = (low + (high - low) * torch.rand(harmful.shape[0], generator=gen)).to(harmful.device)
    coef = torch.where(pick, shift, 0.0)
    tokens = token_mask(mask, n_prefix, 0, "user")
    h_in = shift_along(h_in, unit.to(h_in.dtype), coef.to(h_in.dtype), tokens)
    with torch.no_grad(), block.peft_model.disable_adapter():
        fresh = run_block(block.layer, rotary, h_in[pick].float(), mask[pick])
    h_out = h_out.clone()
    h_out[pick] = fresh.to(h_out.dtype)
    return h_in, h_out


def sample_batch(
    group: torch.Tensor, weights: torch.Tensor, group_probs: torch.Tensor, batch_size: int, gen: torch.Generator
) -> list[int]:
    """Draw a batch: groups by ``group_probs`` (at least one target prompt), prompts within a group by weight."""
    counts = torch.multinomial(group_probs, batch_size, replacement=True, generator=gen).bincount(
        minlength=len(group_probs)
    )
    if counts[0] == 0:
        counts[0] += 1
        counts[int(counts.argmax())] -= 1
    idx: list[int] = []
    for g, n in enumerate(counts.tolist()):
        if n == 0:
            continue
        members = (group == g).nonzero().flatten()
        w = weights[members]
        with_replacement = n > len(members)
        pick = torch.multinomial(w, n, replacement=with_replacement, generator=gen)
        idx += members[pick].tolist()
    return idx
