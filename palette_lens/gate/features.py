"""What a gate reads: a prompt's residual at the gate layer, and the sentences the segment veto reads one by one."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.residuals import collect_residuals

#: Sentence ends, colons and semicolons followed by space, and line breaks: where :func:`prompt_segments` cuts.
_SEGMENT_BREAK = re.compile(r"(?<=[.!?:;])\s+|\n+")


SEGMENT_MIN_WORDS = 4


def prompt_segments(text: str, min_words: int = SEGMENT_MIN_WORDS) -> list[str]:
    """The sentences of a prompt the segment veto reads on their own: cut at sentence ends, colons, semicolons and
    line breaks, stripped of quotes, pieces under ``min_words`` words dropped. [] when fewer than two remain (a
    one-sentence prompt is read whole anyway)."""
    pieces = (p.strip().strip("\"'“”").strip() for p in _SEGMENT_BREAK.split(text))
    kept = [p for p in pieces if len(p.split()) >= min_words]
    return kept if len(kept) > 1 else []


def gate_features(model: ChatModel, prompts: Sequence[str], layer: int, feature: str = "mean",
                  batch_size: int = 32) -> torch.Tensor:
    """``resid_pre`` of ``layer`` per prompt, mean over the post-instruction positions or the last: [n, d_model]."""
    if not 0 <= layer < model.n_layers:
        raise PaletteError(f"gate layer {layer} is outside the model's 0..{model.n_layers - 1}")
    res = collect_residuals(model, list(prompts), layers=[layer], positions=model.positions,
                            batch_size=batch_size, desc="gate")
    x = res.vectors[:, 0]  # [n, n_positions, d_model]
    return x.mean(1) if feature == "mean" else x[:, -1]
