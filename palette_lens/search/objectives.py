"""Objectives of candidate directions: causal scores under ablation, and cheap proxies from activations.

Causal objectives (one ablated forward pass over a small validation set per candidate):

- ``bypass_T``: mean first-token refusal score on target-domain prompts with r̂ ablated at every layer;
- ``retain_N``: the same on non-target harmful prompts;
- ``kl_H``: first-token KL(vanilla ‖ ablated) on harmless prompts.

Proxies (no extra forward pass per candidate):

- attribution (:func:`attribution_matrix`): one forward + backward pass gives, for every layer, the
  gradient of the mean refusal score with respect to the residual stream; the first-order change of
  the score when r̂ is removed from every block's write is ``−r̂ᵀ M r̂`` for one [d, d] matrix ``M``;
- separability (:func:`mean_diff_auc`): cross-validated AUC of a difference-of-means probe separating
  target from non-target prompts in the residual stream (how well one block can tell them apart).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from palette_lens.models.chat_model import ChatModel, Hook
from palette_lens.models.hooks import ablation_hooks, projection_edit_hook
from palette_lens.refusal.prefix_scorer import (
    PrefixScorer,
)
from palette_lens.refusal.tokens import first_token_kl, refusal_scores

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- validation set
@dataclass(frozen=True)
class EvalSet:
    """Validation prompts of one search, grouped, with the vanilla model's first-token log-probs.

    Attributes:
        prompts: all prompts, sorted by length (batches with little padding).
        groups: group name ("target", "harmless" or a non-target domain) of each prompt.
        vanilla: [n_prompts, vocab] log-probs of the unmodified model (reused by every candidate).
        refusal_ids: refusal token set R.
        scorer: the :class:`PrefixScorer` of ``prompts``.
    """

    prompts: tuple[str, ...]
    groups: tuple[str, ...]
    vanilla: torch.Tensor
    refusal_ids: tuple[int, ...]
    scorer: PrefixScorer | None = None

    def logprobs(self, hooks: Sequence[Hook] = (), hooks_on_prefix: bool = True) -> torch.Tensor:
        """[n_prompts, vocab] first-token log-probs under ``hooks``."""
        if self.scorer is None:
            raise ValueError("this EvalSet has no scorer")
        return self.scorer.logprobs(hooks, hooks_on_prefix)

    def mask(self, name: str) -> torch.Tensor:
        return torch.tensor([g == name for g in self.groups])

    def other_mask(self) -> torch.Tensor:
        return torch.tensor([g not in ("target", "harmless") for g in self.groups])

    @property
    def other_domains(self) -> list[str]:
        return sorted({g for g in self.groups if g not in ("target", "harmless")})


def build_eval_set(
    model: ChatModel,
    target: Sequence[str],
    others: dict[str, Sequence[str]],
    harmless: Sequence[str],
    refusal_ids: Sequence[int],
    batch_size: int = 16,
    use_prefix_cache: bool = True,
) -> EvalSet:
    """Group the prompts, prepare their batches once, and compute the vanilla log-probs once."""
    items = [(p, "target") for p in target] + [(p, "harmless") for p in harmless]
    for d, ps in others.items():
        items += [(p, d) for p in ps]
    prompts = tuple(p for p, _ in items)
    groups = tuple(g for _, g in items)
    scorer = PrefixScorer(model, prompts, batch_size, use_prefix_cache)
    return EvalSet(prompts, groups, scorer.logprobs(), tuple(int(i) for i in refusal_ids), scorer)


def objectives_from_logprobs(es: EvalSet, logprobs: torch.Tensor) -> dict[str, float]:
    """``bypass_T``, ``retain_N`` (mean over non-target domains), ``retain_min`` and ``kl_H`` from log-probs."""
    s = refusal_scores(logprobs, es.refusal_ids)
    out = {"bypass_T": float(s[es.mask("target")].mean())}
    per_domain = {d: float(s[es.mask(d)].mean()) for d in es.other_domains}
    out["retain_N"] = sum(per_domain.values()) / len(per_domain) if per_domain else float("nan")
    out["retain_min"] = min(per_domain.values()) if per_domain else float("nan")
    h = es.mask("harmless")
    out["kl_H"] = float(first_token_kl(es.vanilla[h], logprobs[h]).mean()) if h.any() else float("nan")
    return out


def ablation_objectives(model: ChatModel, es: EvalSet, unit: torch.Tensor) -> dict[str, float]:
    """Causal objectives of ablating ``unit`` ([d_model]) at every layer, on the validation set."""
    return objectives_from_logprobs(es, es.logprobs(ablation_hooks(model, unit)))


def edit_objectives(model: ChatModel, es: EvalSet, unit: torch.Tensor, layer: int, scale: float) -> dict[str, float]:
    """Causal objectives of the bake's ideal one-block edit.

    ``h ← h − scale·(h·r̂) r̂`` at ``resid_pre`` of ``layer`` only, on the prompt's own tokens (the shared
    template prefix is left alone, as in training): what a perfect single-block adapter would do to
    every prompt it fires on.
    """
    hooks = [(model.resid_pre_hook(layer), projection_edit_hook(unit, scale))]
    return objectives_from_logprobs(es, es.logprobs(hooks, hooks_on_prefix=False))


# --------------------------------------------------------------------- attribution proxy
def attribution_matrix(
    model: ChatModel, prompts: Sequence[str], refusal_ids: Sequence[int], batch_size: int = 8
) -> torch.Tensor:
    """First-order effect of directional ablation on the mean refusal score, as a quadratic form.

    With ``w_l`` what the embedding / block ``l−1`` writes into the residual stream (``h_l − h_{l−1}``) and
    ``g_l = ∂ s̄ / ∂ h_l`` (gradient of the mean refusal score for an additive change at ``resid_pre``
    of layer l, and at the final residual), removing r̂ from every write changes the score by about
    ``−Σ_{l, tokens} (w_l·r̂)(g_l·r̂) = −r̂ᵀ M r̂`` with ``M = Σ w_lᵀ g_l``.

    Returns:
        M: [d_model, d_model] float64 (averaged over prompts). Estimate for a unit r̂: ``-(r̂ @ M @ r̂)``.
    """
    n_layers, d = model.n_layers, model.d_model
    names = [model.resid_pre_hook(l) for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_out"]
    head = model.hf_model.get_output_embeddings()
    ids = list(refusal_ids)
    m = torch.zeros(d, d, dtype=torch.float64)
    for batch in model.batches(list(prompts), batch_size):
        enc = model.encode(batch)
        zs: dict[int, torch.Tensor] = {}
        hs: dict[int, torch.Tensor] = {}

        def tap(i: int):
            def hook(act: torch.Tensor, hook=None) -> torch.Tensor:  # noqa: ARG001
                z = torch.zeros_like(act, requires_grad=True)
                zs[i], hs[i] = z, act.detach()
                return act + z

            return hook

        hooks = [(name, tap(i)) for i, name in enumerate(names)]
        with torch.enable_grad(), model.hooks(hooks):
            hidden = model.decoder(**enc, use_cache=False).last_hidden_state[:, -1]
            lp = torch.log_softmax(head(hidden).float(), dim=-1)
            total = refusal_scores(lp, ids).sum()
            grads = torch.autograd.grad(total, [zs[i] for i in range(len(names))])
        mask = enc["attention_mask"].unsqueeze(-1).to(torch.float64).cpu()
        prev = torch.zeros_like(hs[0], dtype=torch.float64).cpu()
        for i in range(len(names)):
            h = hs[i].to(torch.float64).cpu()
            w = ((h - prev) * mask).reshape(-1, d)
            g = (grads[i].to(torch.float64).cpu() * mask).reshape(-1, d)
            m += w.T @ g
            prev = h
    return m / max(1, len(prompts))


def attribution_estimates(m: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Estimated change of the mean refusal score for each unit direction: [n] from units [n, d]."""
    u = units.to(torch.float64)
    return -torch.einsum("nd,de,ne->n", u, m, u).to(torch.float32)


def edit_attribution_estimates(
    model: ChatModel,
    prompts: Sequence[str],
    refusal_ids: Sequence[int],
    units: dict[int, torch.Tensor],
    scale: float,
    batch_size: int = 8,
) -> dict[int, torch.Tensor]:
    """First-order change of the mean refusal score under the one-block edit, for many candidates at once.

    For the edit ``h_l ← h_l − s·(h_l·r̂) r̂`` at ``resid_pre`` of layer l on the prompt's own tokens, the
    score changes by about ``−s·Σ_tokens (h_l·r̂)(g_l·r̂)`` with ``g_l = ∂ s̄ / ∂ h_l``. One forward and
    backward pass gives every ``h_l`` and ``g_l``; no per-candidate pass is needed.

    Args:
        units: layer → [n_candidates, d_model] unit directions read at that layer.
        scale: s.

    Returns:
        layer → [n_candidates] estimated change of the mean refusal score (negative: less refusal).
    """
    from palette_lens.models.blocks import prefix_length

    layers = sorted(units)
    names = [model.resid_pre_hook(l) for l in layers]
    head = model.hf_model.get_output_embeddings()
    ids = list(refusal_ids)
    n_prefix = prefix_length(model)
    est = {l: torch.zeros(units[l].shape[0], dtype=torch.float64) for l in layers}
    for batch in model.batches(list(prompts), batch_size):
        enc = model.encode(batch)
        zs: dict[int, torch.Tensor] = {}
        hs: dict[int, torch.Tensor] = {}

        def tap(l: int):
            def hook(act: torch.Tensor, hook=None) -> torch.Tensor:  # noqa: ARG001
                z = torch.zeros_like(act, requires_grad=True)
                zs[l], hs[l] = z, act.detach()
                return act + z

            return hook

        with torch.enable_grad(), model.hooks([(n, tap(l)) for n, l in zip(names, layers)]):
            hidden = model.decoder(**enc, use_cache=False).last_hidden_state[:, -1]
            lp = torch.log_softmax(head(hidden).float(), dim=-1)
            grads = torch.autograd.grad(refusal_scores(lp, ids).sum(), [zs[l] for l in layers])
        mask = enc["attention_mask"]
        own = (mask.bool() & ((mask.long().cumsum(-1) - 1) >= n_prefix)).cpu()  # the prompt's own tokens
        for l, g in zip(layers, grads):
            h = hs[l].to(torch.float64).cpu()[own]  # [tokens, d]
            gl = g.to(torch.float64).cpu()[own]
            u = units[l].to(torch.float64)
            est[l] += ((h @ u.T) * (gl @ u.T)).sum(0)
    n = max(1, len(prompts))
    return {l: (-scale * est[l] / n).to(torch.float32) for l in layers}


# --------------------------------------------------------------------- separability proxy
def mean_diff_auc(pos: torch.Tensor, neg: torch.Tensor, folds: int = 5, seed: int = 0) -> torch.Tensor:
    """Cross-validated AUC of a difference-of-means probe, for every trailing site at once.

    Args:
        pos: [a, *sites, d] vectors of the positive class (e.g. target prompts).
        neg: [b, *sites, d] vectors of the negative class (e.g. non-target harmful prompts).
        folds: number of folds (capped by the smaller class).
        seed: fold assignment seed.

    Returns:
        [*sites] AUC in [0, 1] of out-of-fold projections on the (unit) train-fold mean difference.
    """
    a, b = pos.shape[0], neg.shape[0]
    k = max(2, min(folds, a, b))
    gen = torch.Generator().manual_seed(seed)
    fold_pos = torch.randperm(a, generator=gen) % k
    fold_neg = torch.randperm(b, generator=gen) % k
    pos, neg = pos.to(torch.float64), neg.to(torch.float64)
    sp = torch.empty(pos.shape[:-1], dtype=torch.float64)
    sn = torch.empty(neg.shape[:-1], dtype=torch.float64)
    for f in range(k):
        tp, tn = fold_pos != f, fold_neg != f
        mu_p, mu_n = pos[tp].mean(0), neg[tn].mean(0)
        w = mu_p - mu_n
        w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        mid = 0.5 * (mu_p + mu_n)
        sp[~tp] = ((pos[~tp] - mid) * w).sum(-1)
        sn[~tn] = ((neg[~tn] - mid) * w).sum(-1)
    greater = (sp.unsqueeze(1) > sn.unsqueeze(0)).to(torch.float64)
    ties = (sp.unsqueeze(1) == sn.unsqueeze(0)).to(torch.float64)
    return (greater + 0.5 * ties).mean(dim=(0, 1)).to(torch.float32)
