"""Multi-objective refusal-direction search for one target domain.

Pipeline of :func:`search_direction`:

1. candidates ``r[l, p]`` = difference of means (target vs harmless train prompts) at every layer and
   post-instruction position (:mod:`palette_lens.search.candidates`), from residuals collected once and reusable
   across domains;
2. filters: layers ``1 ≤ l < (1 − drop_last_frac)·L`` (a direction at layer l is baked into block l−1,
   and Arditi et al. drop the last 20% of layers);
3. cheap pruning: every remaining candidate gets a first-order (attribution) estimate of ``bypass_T``
   (one forward + backward pass in all) and a separability score ``sep_N`` (cross-validated AUC of
   target vs non-target harmful train prompts at the input of block l−1); the ``top_k`` best by a proxy
   of the selection rule (plus the best by estimated bypass alone) go on;
4. causal scoring of the kept candidates (one forward pass over a small validation set each, vanilla
   log-probs computed once) under the bake's ideal one-block edit ``h ← h − s·(h·r̂) r̂`` at layer l
   (default; ``intervention="ablate"`` ablates r̂ at every layer instead): ``bypass_T`` (lower is
   better), ``retain_N`` (higher is better), ``kl_H`` (lower is better);
5. the Pareto front of (bypass_T, retain, kl_H) and the choice: minimise ``α·bypass' − (1−α)·retain'``
   (both min-max scaled) subject to ``kl_H ≤ kl_max`` and ``bypass_T ≤ bypass_max``, relaxing the
   constraints in that order when nothing passes (recorded in ``SearchResult.fallback``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import HARMLESS
from palette_lens.errors import DataError, PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.residuals import Residuals
from palette_lens.refusal.tokens import opener_tokens
from palette_lens.search.candidates import Candidates, candidates_from_residuals, collect_domain_residuals
from palette_lens.search.objectives import (
    EvalSet,
    ablation_objectives,
    attribution_estimates,
    attribution_matrix,
    build_eval_set,
    edit_attribution_estimates,
    edit_objectives,
    mean_diff_auc,
)
from palette_lens.search.pareto import choose, pareto_front, retention_scores
from palette_lens.search.result import (
    SearchConfig,
    SearchResult,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- the search
def _even_pick(prompts: Sequence[str], n: int) -> list[str]:
    return list(prompts)[:n]


def search_direction(
    model: ChatModel,
    prompts: PromptSet,
    target: str,
    *,
    residuals: Mapping[str, Residuals] | None = None,
    config: SearchConfig | None = None,
    refusal_ids: Sequence[int] | None = None,
    other_domains: Sequence[str] | None = None,
    progress: bool = True,
    **options,
) -> SearchResult:
    """Find the refusal direction of ``target`` by multi-objective search.

    Args:
        model: the chat model (never modified; hooks are removed after every pass).
        prompts: the prompt set (train split for candidates and separability, validation for scores).
        target: the target (authorized) harmful domain.
        residuals: train residuals per domain (:func:`collect_domain_residuals`) to reuse across
            searches; missing domains are collected here.
        config: settings; keyword ``options`` override single fields (e.g. ``alpha=0.7, top_k=None``).
        refusal_ids: refusal token set R (default: the tokenizer's refusal-opener tokens).
        other_domains: non-target harmful domains for ``retain_N`` / ``sep_N`` (default: all others).
        progress: show progress bars.
        **options: single :class:`SearchConfig` fields overriding ``config`` (e.g. ``alpha=0.7``).

    Returns:
        :class:`SearchResult` (``candidates``, ``pareto``, ``chosen``, ``save(dir)``, ``to_json()``); the
        chosen direction's ``vector`` is [d_model].

    Raises:
        UnknownDomainError: ``target`` or one of ``other_domains`` is not in ``prompts``.
        DataError: ``target`` is not a harmful domain (e.g. ``"harmless"``), or it has no train prompts.
        PaletteError: no candidate layer passes the layer filters (``min_layer``, ``drop_last_frac``,
            ``layers``).
        TypeError: an option that is not a :class:`SearchConfig` field.

    Examples:
        >>> found = search_direction(model, prompts, "cyber", alpha=0.7)      # doctest: +SKIP
        >>> found.chosen.vector.shape                                         # doctest: +SKIP
        torch.Size([896])
        >>> found.fallback is None                                            # doctest: +SKIP
        True
    """
    cfg = replace(config or SearchConfig(), **options).resolved()
    prompts.check_domain(target)
    if target == HARMLESS or target not in prompts.harmful_domains:
        raise DataError(f"the target must be a harmful domain, not {target!r}")
    others = [d for d in (other_domains if other_domains is not None else prompts.harmful_domains) if d != target]
    for d in others:
        prompts.check_domain(d)
    ids = list(refusal_ids) if refusal_ids is not None else sorted(opener_tokens(model.tokenizer))
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. residuals and candidates
    t0 = time.perf_counter()
    res = collect_domain_residuals(model, prompts, [target, HARMLESS, *others], limit=cfg.n_train, have=residuals)
    cands = candidates_from_residuals(
        res[target], res[HARMLESS], target, model.fingerprint, prompts.data_hash([target, HARMLESS])
    )
    timings["residuals"] = time.perf_counter() - t0

    # 2. filters
    n_layers = model.n_layers
    max_layer = n_layers * (1.0 - cfg.drop_last_frac)
    keys = list(cands.keys())
    eligible = [cfg.min_layer <= l < max_layer and (cfg.layers is None or l in cfg.layers) for l, _ in keys]
    if not any(eligible):
        only = f" among layers {list(cfg.layers)}" if cfg.layers is not None else ""
        raise PaletteError(f"no candidate layer in [{cfg.min_layer}, {max_layer:.1f}){only} for a {n_layers}-layer model")
    units = cands.units().reshape(-1, cands.vectors.shape[-1])
    norms = cands.norms().reshape(-1)
    rel_norm = (cands.norms() / cands.harmless_norm.clamp_min(1e-12)).reshape(-1)

    # 3. validation set (vanilla log-probs once) and proxies
    t0 = time.perf_counter()
    val_target = _even_pick(prompts.part(target, "val"), cfg.n_val)
    val_harmless = _even_pick(prompts.part(HARMLESS, "val"), cfg.n_val)
    val_others = {d: _even_pick(prompts.part(d, "val"), cfg.n_val_other) for d in others}
    es = build_eval_set(model, val_target, val_others, val_harmless, ids, cfg.batch_size)
    vanilla = ablation_free_objectives(es)
    timings["vanilla"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sep = _separability(res, target, others, cands)
    proxy = torch.full((len(keys),), float("nan"))
    if cfg.proxy == "attribution" and cfg.top_k is not None and cfg.intervention == "ablate":
        m = attribution_matrix(model, val_target[: cfg.n_proxy], ids, batch_size=cfg.batch_size)
        proxy = vanilla["bypass_T"] + attribution_estimates(m, units)
    elif cfg.proxy == "attribution" and cfg.top_k is not None:
        by_layer: dict[int, list[int]] = {}
        for i, (l, _p) in enumerate(keys):
            if eligible[i]:
                by_layer.setdefault(l, []).append(i)
        est = edit_attribution_estimates(
            model, val_target[: cfg.n_proxy], ids, {l: units[ix] for l, ix in by_layer.items()}, cfg.edit_scale,
            batch_size=cfg.batch_size,
        )
        for l, ix in by_layer.items():
            proxy[ix] = vanilla["bypass_T"] + est[l]
    elif cfg.proxy == "norm":
        proxy = -rel_norm
    timings["proxy"] = time.perf_counter() - t0

    rows: list[dict] = []
    for i, (l, p) in enumerate(keys):
        rows.append(
            {
                "layer": l,
                "position": p,
                "norm": float(norms[i]),
                "rel_norm": float(rel_norm[i]),
                "eligible": bool(eligible[i]),
                "proxy": None if math.isnan(float(proxy[i])) else float(proxy[i]),
                "sep_N": None if math.isnan(float(sep[i])) else float(sep[i]),
                "evaluated": False,
            }
        )

    # 4. prune and score causally
    to_eval = _prune(rows, cfg)
    t0 = time.perf_counter()
    it = tqdm(to_eval, desc=f"search {target}", disable=not progress, leave=False)
    for i in it:
        if cfg.intervention == "edit":
            rows[i].update(edit_objectives(model, es, units[i], rows[i]["layer"], cfg.edit_scale))
        else:
            rows[i].update(ablation_objectives(model, es, units[i]))
        rows[i]["evaluated"] = True
    timings["causal"] = time.perf_counter() - t0

    # 5. Pareto front and choice
    evaluated = [r for r in rows if r["evaluated"]]
    retain = retention_scores(evaluated, cfg.retain)
    for r, v in zip(evaluated, retain):
        r["retain"] = float(v)
    front = pareto_front(
        np.array([[r["bypass_T"], r["retain"], r["kl_H"]] for r in evaluated]), maximize=[False, True, False]
    )
    for k, r in enumerate(evaluated):
        r["pareto"] = k in front
    j, fallback = choose(evaluated, cfg.alpha, cfg.kl_max, cfg.bypass_max)
    if fallback:
        log.warning("search %s: %s", target, fallback)
    path = []
    for a in cfg.alphas:
        ja, _ = choose(evaluated, float(a), cfg.kl_max, cfg.bypass_max)
        path.append({"alpha": float(a), "layer": evaluated[ja]["layer"], "position": evaluated[ja]["position"]})
    best = evaluated[j]
    if cfg.intervention == "edit":  # for reference: the chosen direction ablated at every layer
        ablated = ablation_objectives(model, es, units[rows.index(best)])
        best.update({f"ablate_{k}": v for k, v in ablated.items()})
    timings["total"] = time.perf_counter() - t_all
    n_prompts = {
        "train": {d: len(res[d]) for d in [target, HARMLESS, *others]},
        "val": {"target": len(val_target), "harmless": len(val_harmless), "other": {d: len(v) for d, v in val_others.items()}},
    }
    chosen = cands.direction(
        best["layer"],
        best["position"],
        objectives={k: best.get(k) for k in ("bypass_T", "retain_N", "retain_min", "sep_N", "kl_H", "ablate_bypass_T")},
        intervention=cfg.intervention,
        vanilla=vanilla,
        alpha=cfg.alpha,
        retain_kind=cfg.retain,
        fallback=fallback,
        data_hash_all=prompts.data_hash([target, HARMLESS, *others]),
        refusal_ids=ids,
    )
    log.info(
        "search %s: chose layer %d position %d (bypass_T %.2f, retain_N %.2f, kl_H %.3f) in %.0f s",
        target, best["layer"], best["position"], best["bypass_T"], best["retain_N"], best["kl_H"], timings["total"],
    )
    return SearchResult(
        target=target,
        candidates=rows,
        pareto=[evaluated[k] for k in front],
        chosen=chosen,
        vanilla=vanilla,
        alpha_path=path,
        config=cfg,
        fallback=fallback,
        timings_s={k: round(v, 2) for k, v in timings.items()},
        refusal_ids=ids,
        n_prompts=n_prompts,
        model=model.name,
        candidate_set=cands,
    )


def ablation_free_objectives(es: EvalSet) -> dict[str, float]:
    """Objectives of the unmodified model on the validation set (kl_H is 0 by definition)."""
    from palette_lens.search.objectives import objectives_from_logprobs

    return objectives_from_logprobs(es, es.vanilla)


def _separability(res: Mapping[str, Residuals], target: str, others: Sequence[str], cands: Candidates) -> torch.Tensor:
    """sep_N per candidate (flattened layer-major): AUC of target vs non-target at the input of block l−1."""
    out = torch.full((len(cands.layers), len(cands.positions)), float("nan"))
    neg = [res[d].vectors for d in others if len(res[d])]
    if not neg or len(res[target]) < 2:
        return out.reshape(-1)
    auc = mean_diff_auc(res[target].vectors, torch.cat(neg))  # [n_layers_collected, n_positions]
    layers = list(res[target].layers)
    for i, l in enumerate(cands.layers):
        if l - 1 in layers:
            out[i] = auc[layers.index(l - 1)]
    return out.reshape(-1)


def _prune(rows: list[dict], cfg: SearchConfig) -> list[int]:
    """Indices of the candidates to score causally: every eligible one, or the best ``top_k`` by proxy."""
    eligible = [i for i, r in enumerate(rows) if r["eligible"]]
    if cfg.top_k is None or cfg.top_k >= len(eligible) or cfg.proxy == "none":
        return eligible
    from palette_lens.search.pareto import minmax

    proxy = np.array([rows[i]["proxy"] for i in eligible], dtype=float)
    sep = np.array([rows[i]["sep_N"] if rows[i]["sep_N"] is not None else 0.5 for i in eligible], dtype=float)
    # half by estimated bypass alone (the target must comply), the rest by the selection rule's proxy
    by_bypass = [eligible[k] for k in np.argsort(proxy, kind="stable")]
    combined = cfg.alpha * minmax(proxy) - (1 - cfg.alpha) * minmax(sep)
    by_rule = [eligible[k] for k in np.argsort(combined, kind="stable")]
    keep: list[int] = []
    for i in by_bypass[: max(1, cfg.top_k // 2)]:
        keep.append(i)
    for i in by_rule:
        if len(keep) >= cfg.top_k:
            break
        if i not in keep:
            keep.append(i)
    return sorted(keep)
