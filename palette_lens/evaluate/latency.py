"""Latency per generated token, measured side by side (interleaved runs) for several model variants."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from palette_lens.models.chat_model import ChatModel, Hook

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- latency
@dataclass
class LatencyResult:
    """Per-variant latency, measured interleaved (A B C A B C …) on the same prompts.

    Attributes:
        ms_per_token: variant → median milliseconds per generated token per sequence (a decoding step of
            the batch, with the prompt's prefill spread over the tokens).
        runs_ms: variant → every run's milliseconds per token.
        new_tokens, batch_size, repeats: the settings.
    """

    ms_per_token: dict[str, float]
    runs_ms: dict[str, list[float]]
    new_tokens: int
    batch_size: int
    repeats: int

    def ratios(self, reference: str = "vanilla") -> dict[str, float]:
        """Variant → median latency / the reference's."""
        ref = self.ms_per_token[reference]
        return {k: v / ref for k, v in self.ms_per_token.items()}

    def to_dict(self) -> dict:
        return {
            "ms_per_token": self.ms_per_token,
            "runs_ms": self.runs_ms,
            "ratios_to_vanilla": self.ratios() if "vanilla" in self.ms_per_token else {},
            "new_tokens": self.new_tokens,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
        }


@torch.no_grad()
def measure_latency(
    model: ChatModel,
    prompts: Sequence[str],
    variants: Mapping[str, tuple[Any | None, Sequence[Hook]] | Callable[[], Any]],
    new_tokens: int = 16,
    batch_size: int = 4,
    repeats: int = 3,
) -> LatencyResult:
    """Milliseconds per generated token for several variants, side by side on the same prompts.

    Every run generates exactly ``new_tokens`` tokens (end of turn disabled) for the first ``batch_size``
    prompts. Variants run interleaved, ``repeats`` times each after one warm-up round, so background load
    affects them alike; the median is reported.

    Args:
        model: the base chat model (tokenizer, chat template, stop tokens).
        prompts: user prompts; only the first ``batch_size`` are used.
        variants: name → ``(lm, hooks)``: ``lm`` a HF model (None: the bridge-wrapped base model, with
            ``hooks`` active); or name → a zero-argument callable that runs one generation itself.
        new_tokens: tokens generated per run (the callable variants choose their own; their time is
            still divided by ``new_tokens``).
        batch_size: sequences per run.
        repeats: timed runs per variant (after one warm-up run each).

    Returns:
        A ``LatencyResult``: ``ms_per_token`` (variant → median ms per generated token), ``runs_ms`` and
        ``ratios(reference="vanilla")``.

    Examples:
        >>> lat = measure_latency(model, prompts.part("harmless", "test"),                 # doctest: +SKIP
        ...                       {"vanilla": (None, ()), "cyber": (merged, ())})           # doctest: +SKIP
        >>> lat.ratios()                                                                    # doctest: +SKIP
        {'vanilla': 1.0, 'cyber': 1.01}
    """
    batch = list(prompts)[:batch_size]
    enc = model.encode(batch)
    pad = model.tokenizer.pad_token_id

    def runner(spec):
        if callable(spec):
            return spec
        lm, hooks = spec
        target = lm if lm is not None else model.hf_model

        def go():
            ctx = model.hooks(hooks) if hooks else nullcontext()
            with ctx:
                target.generate(
                    **{k: v.to(next(target.parameters()).device) for k, v in enc.items()},
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None, pad_token_id=pad, eos_token_id=model.stop_token_ids,
                )

        return go

    runners = {name: runner(spec) for name, spec in variants.items()}
    runs: dict[str, list[float]] = {name: [] for name in runners}
    for name, go in runners.items():  # warm-up
        go()
    for _ in tqdm(range(repeats), desc="latency", leave=False):
        for name, go in runners.items():
            t = time.perf_counter()
            go()
            runs[name].append(1000.0 * (time.perf_counter() - t) / new_tokens)
    med = {name: statistics.median(v) for name, v in runs.items()}
    return LatencyResult(med, runs, new_tokens, len(batch), repeats)
