"""Compare one model under several *variants*: per-domain first-token refusal scores and greedy completions
side by side (what the notebooks show before / after an intervention).

A variant is what changes the model for the duration of one call:

- ``None``: the unmodified model;
- a list of TransformerLens hooks (e.g. :func:`palette_lens.models.hooks.ablation_hooks`);
- a zero-argument callable returning a context manager (e.g. ``lambda: adapters_applied(model, [a])``),
  entered around the variant's forward passes and always exited.

The model is never left modified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from palette_lens.models.chat_model import ChatModel, Hook
from palette_lens.refusal.judge import is_refusal
from palette_lens.refusal.tokens import opener_tokens, refusal_scores
from palette_lens.util.text import truncate

log = logging.getLogger(__name__)

Variant = Sequence[Hook] | Callable[[], AbstractContextManager] | None


def variant_context(model: ChatModel, variant: Variant) -> AbstractContextManager:
    """The context manager that applies ``variant`` to ``model`` (see the module docstring)."""
    if variant is None:
        return nullcontext()
    if callable(variant):
        return variant()
    return model.hooks(list(variant))


def _flatten(prompts_by_domain: Mapping[str, Sequence[str]]) -> tuple[list[str], list[tuple[str, slice]]]:
    flat: list[str] = []
    spans: list[tuple[str, slice]] = []
    for d, ps in prompts_by_domain.items():
        spans.append((d, slice(len(flat), len(flat) + len(ps))))
        flat += list(ps)
    return flat, spans


def scores_by_domain(
    model: ChatModel,
    prompts_by_domain: Mapping[str, Sequence[str]],
    variants: Mapping[str, Variant],
    refusal_ids: Sequence[int] | None = None,
    batch_size: int = 32,
) -> dict[str, dict[str, list[float]]]:
    """First-token refusal scores (log-odds, no generation) of every prompt under every variant.

    The chat-template prefix common to all prompts (for Qwen, its default system message) is computed
    once per variant and reused through its key/value cache
    (:class:`palette_lens.refusal.prefix_scorer.PrefixScorer`); the scores equal those of
    :meth:`ChatModel.last_logits` up to float error.

    Args:
        model: the chat model (restored after each variant).
        prompts_by_domain: domain → user prompts.
        variants: variant name → variant (e.g. ``{"vanilla": None, "ablated": hooks}``).
        refusal_ids: refusal token set R (default: the tokenizer's refusal-opener tokens).
        batch_size: prompts per forward pass.

    Returns:
        domain → variant name → per-prompt scores (in the order of the prompts).

    Examples:
        >>> groups = {d: prompts.part(d, "test", 8) for d in ("cyber", "harmless")}  # doctest: +SKIP
        >>> hooks = ablation_hooks(model, found.chosen.vector)                       # doctest: +SKIP
        >>> scores = scores_by_domain(model, groups, {"vanilla": None, "ablated": hooks})  # doctest: +SKIP
        >>> mean_scores(scores)["cyber"]                                             # doctest: +SKIP
        {'vanilla': 2.1, 'ablated': -3.4}
    """
    from palette_lens.refusal.prefix_scorer import PrefixScorer

    ids = list(refusal_ids) if refusal_ids is not None else sorted(opener_tokens(model.tokenizer))
    flat, spans = _flatten(prompts_by_domain)
    out: dict[str, dict[str, list[float]]] = {d: {} for d, _ in spans}
    if not flat:
        return out
    # the chat-template prefix shared by every prompt runs once per variant (under the variant)
    scorer = PrefixScorer(model, flat, batch_size)
    for name, variant in variants.items():
        if variant is None or callable(variant):
            with variant_context(model, variant):
                lp = scorer.logprobs()
        else:
            lp = scorer.logprobs(list(variant))
        s: torch.Tensor = refusal_scores(lp, ids)  # [n]
        for d, sl in spans:
            out[d][name] = [float(v) for v in s[sl]]
    return out


def mean_scores(scores: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, float]]:
    """domain → variant → mean of the per-prompt values returned by :func:`scores_by_domain`.

    Args:
        scores: domain → variant → per-prompt values (e.g. :func:`scores_by_domain` output).

    Returns:
        domain → variant → mean (NaN for an empty list).

    Examples:
        >>> mean_scores({"cyber": {"vanilla": [2.0, 3.0], "ablated": [-1.0, -2.0]}, "bio": {"vanilla": []}})
        {'cyber': {'vanilla': 2.5, 'ablated': -1.5}, 'bio': {'vanilla': nan}}
    """
    return {
        d: {v: (sum(vals) / len(vals) if vals else float("nan")) for v, vals in per.items()}
        for d, per in scores.items()
    }


def completions_side_by_side(
    model: ChatModel,
    prompts_by_domain: Mapping[str, Sequence[str]],
    variants: Mapping[str, Variant],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    width: int = 160,
) -> list[dict]:
    """Greedy completions of every prompt under every variant, one row per prompt.

    Args:
        model: the chat model (restored after each variant).
        prompts_by_domain: domain → user prompts.
        variants: variant name → variant (``None``, a list of hooks, or a callable returning a context
            manager, e.g. ``lambda: adapters_applied(model, [adapter])``).
        max_new_tokens: greedy tokens per completion.
        batch_size: prompts per ``generate`` call.
        width: characters kept of each completion in the rows.

    Returns:
        rows with ``domain``, ``prompt`` (truncated) and, per variant ``v``, ``v`` (the truncated completion)
        and ``v refused`` (the keyword judge's verdict on the full completion).

    Examples:
        >>> variants = {"vanilla": None, "cyber": lambda: adapters_applied(model, [adapter])}  # doctest: +SKIP
        >>> rows = completions_side_by_side(model, {"cyber": cyber_prompts[:4]}, variants)   # doctest: +SKIP
        >>> refusal_rates(rows, "cyber")                                                    # doctest: +SKIP
        {'cyber': 0.25}
    """
    flat, spans = _flatten(prompts_by_domain)
    texts: dict[str, list[str]] = {}
    for name, variant in variants.items():
        with variant_context(model, variant):
            texts[name] = model.generate(flat, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = []
    for d, sl in spans:
        for i in range(sl.start, sl.stop):
            row: dict = {"domain": d, "prompt": truncate(flat[i], 90)}
            for name in variants:
                row[name] = truncate(texts[name][i], width)
                row[f"{name} refused"] = is_refusal(texts[name][i])
            rows.append(row)
    return rows


def refusal_rates(rows: Sequence[dict], variant: str) -> dict[str, float]:
    """domain → share of ``rows`` (from :func:`completions_side_by_side`) that ``variant`` refused.

    Args:
        rows: rows of :func:`completions_side_by_side` (``domain`` and ``"<variant> refused"`` keys).
        variant: the variant's name.

    Returns:
        domain → refusal rate, in the order the domains first appear.

    Raises:
        KeyError: ``variant`` is not among the rows' variants.

    Examples:
        >>> rows = [{"domain": "cyber", "ablated refused": False},
        ...         {"domain": "cyber", "ablated refused": True}]
        >>> refusal_rates(rows, "ablated")
        {'cyber': 0.5}
    """
    per: dict[str, list[bool]] = {}
    for r in rows:
        per.setdefault(r["domain"], []).append(bool(r[f"{variant} refused"]))
    return {d: sum(v) / len(v) for d, v in per.items()}
