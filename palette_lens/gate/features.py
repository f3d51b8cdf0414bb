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


class GateFeatureCache:
    """Gate features already read from one model, per (layer, feature) and prompt.

    Gates for several profiles train on mostly the same prompts (every domain's requests; only the adversarial
    and framed variants depend on the authorized domains): with one cache passed to each
    :func:`~palette_lens.gate.training.fit_gate`, a run reads each prompt once. Rows are [d_model] float32 on the
    CPU (896 floats a prompt on the default model).

    Raises:
        PaletteError: used with a model other than the one it was made for.

    Examples:
        >>> cache = GateFeatureCache(model)                                          # doctest: +SKIP
        >>> x = gate_features(model, ["Write a port scanner."], 6, cache=cache)       # doctest: +SKIP
        >>> len(cache)                                                               # doctest: +SKIP
        1
    """

    def __init__(self, model: ChatModel) -> None:
        self.fingerprint = model.fingerprint
        self._rows: dict[tuple[int, str, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def check_model(self, model: ChatModel) -> None:
        """Raise :class:`~palette_lens.errors.PaletteError` unless ``model`` is the cache's model."""
        if model.fingerprint != self.fingerprint:
            raise PaletteError("this gate feature cache holds another model's features; make one per model")

    def missing(self, prompts: Sequence[str], layer: int, feature: str) -> list[str]:
        """The distinct prompts not read yet at (``layer``, ``feature``), in first-seen order."""
        return [p for p in dict.fromkeys(prompts) if (layer, feature, p) not in self._rows]

    def put(self, prompts: Sequence[str], layer: int, feature: str, x: torch.Tensor) -> None:
        """Keep [n_prompts, d_model] features ``x`` of ``prompts``."""
        for p, row in zip(prompts, x, strict=True):
            self._rows[(layer, feature, p)] = row

    def get(self, prompts: Sequence[str], layer: int, feature: str) -> torch.Tensor:
        """[n_prompts, d_model] features of prompts already read."""
        return torch.stack([self._rows[(layer, feature, p)] for p in prompts])


def gate_features(model: ChatModel, prompts: Sequence[str], layer: int, feature: str = "mean",
                  batch_size: int = 32, cache: GateFeatureCache | None = None) -> torch.Tensor:
    """``resid_pre`` of ``layer`` per prompt, mean over the post-instruction positions or the last: [n, d_model].

    With ``cache`` only the prompts it does not hold yet go through the model (and are added to it).
    """
    if not 0 <= layer < model.n_layers:
        raise PaletteError(f"gate layer {layer} is outside the model's 0..{model.n_layers - 1}")
    if cache is not None:
        cache.check_model(model)
        todo = cache.missing(prompts, layer, feature)
        if todo:
            cache.put(todo, layer, feature, gate_features(model, todo, layer, feature, batch_size))
        return cache.get(prompts, layer, feature) if prompts else torch.empty(0, model.d_model)
    res = collect_residuals(model, list(prompts), layers=[layer], positions=model.positions,
                            batch_size=batch_size, desc="gate")
    x = res.vectors[:, 0]  # [n, n_positions, d_model]
    return x.mean(1) if feature == "mean" else x[:, -1]
