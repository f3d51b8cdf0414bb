"""Candidate refusal directions of one target domain: difference of means per (layer, position).

``r[l, p] = mean_T h[l, p] − mean_harmless h[l, p]`` over the *train* prompts of the target domain and of
``harmless``, with ``h`` the ``resid_pre`` of layer l at post-instruction position p. Residuals are
collected once per domain (:func:`collect_domain_residuals`) and can be shared by the searches of every
domain and by the layer-wise views.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import HARMLESS
from palette_lens.errors import DataError
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.residuals import Residuals, collect_residuals
from palette_lens.search.direction import Direction, diff_in_means

log = logging.getLogger(__name__)


@torch.no_grad()
def collect_residuals_prefixed(
    model: ChatModel, prompts: Sequence[str], batch_size: int = 32, desc: str | None = "residuals"
) -> Residuals:
    """``resid_pre`` of every layer at every post-instruction position, running the shared template prefix once.

    Same result as :func:`palette_lens.models.residuals.collect_residuals` (up to float error) for all layers and
    positions, but the chat-template prefix common to every rendered prompt (for Qwen, its default system
    message: about half of a short prompt) is computed once and reused through its key/value cache, and the
    pass stops after the last layer read.

    Returns:
        :class:`Residuals` with vectors [n_prompts, n_layers, n_post, d_model] (float32, CPU).
    """
    from tqdm.auto import tqdm

    from palette_lens.refusal.prefix_scorer import PrefixScorer

    layers = tuple(range(model.n_layers))
    positions = tuple(model.positions)
    n_pos = len(positions)
    vectors = torch.empty(len(prompts), len(layers), n_pos, model.d_model)
    if not prompts:
        return Residuals(vectors, layers, positions)
    scorer = PrefixScorer(model, prompts, batch_size, min_suffix=n_pos)
    state: dict = {"prefix": False, "acts": {}}

    def grab(slot: int):
        def hook(act: torch.Tensor, hook=None) -> torch.Tensor:  # noqa: ARG001
            if not state["prefix"]:
                state["acts"][slot] = act[:, -n_pos:].detach().float().cpu()
            return act

        return hook

    def on_prefix(active: bool) -> None:
        state["prefix"] = active

    hooks = [(model.resid_pre_hook(l), grab(i)) for i, l in enumerate(layers)]
    runs = scorer.run(hooks, stop_after=max(layers), on_prefix=on_prefix)
    for idx, _ in tqdm(runs, total=len(scorer.batches), desc=desc, disable=desc is None, leave=False):
        vectors[idx] = torch.stack([state["acts"][i] for i in range(len(layers))], dim=1)
        state["acts"] = {}
    return Residuals(vectors, layers, positions)


def collect_domain_residuals(
    model: ChatModel,
    prompts: PromptSet,
    domains: Sequence[str] | None = None,
    part: str = "train",
    limit: int | None = None,
    batch_size: int = 32,
    cache: bool | str = False,
    have: Mapping[str, Residuals] | None = None,
) -> dict[str, Residuals]:
    """``resid_pre`` of every layer at the post-instruction positions, per domain.

    Args:
        model: the chat model.
        prompts: the prompt set.
        domains: domains to collect (default: every harmful domain plus ``harmless``).
        part: split part ("train", "val", "test").
        limit: at most this many prompts per domain.
        batch_size: prompts per forward pass.
        cache: when set, use :func:`collect_residuals` with its disk cache (keyed by model and prompts);
            otherwise :func:`collect_residuals_prefixed` (the shared template prefix is run once).
        have: residuals already collected (reused, not recomputed). Every entry of ``have`` is also in the
            result, even for domains not in ``domains``; their part and limit are not checked.

    Returns:
        domain -> :class:`Residuals` with vectors [n_prompts, n_layers, n_positions, d_model] (every layer,
        every post-instruction position).

    Raises:
        UnknownDomainError: a domain that ``prompts`` does not contain.

    Examples:
        >>> res = collect_domain_residuals(model, prompts, ["cyber", "harmless"], limit=32)  # doctest: +SKIP
        >>> res["cyber"].vectors.shape                                                      # doctest: +SKIP
        torch.Size([32, 24, 5, 896])
    """
    domains = list(domains) if domains is not None else [*prompts.harmful_domains, HARMLESS]
    out: dict[str, Residuals] = dict(have or {})
    for d in domains:
        if d in out:
            continue
        texts = prompts.part(d, part, limit)
        if cache:
            out[d] = collect_residuals(model, texts, batch_size=batch_size, cache=cache, desc=f"residuals {d}")
        else:
            out[d] = collect_residuals_prefixed(model, texts, batch_size=batch_size, desc=f"residuals {d}")
    return out


@dataclass(frozen=True)
class Candidates:
    """All difference-of-means candidates of one target domain.

    Attributes:
        vectors: [n_layers, n_positions, d_model] raw (unnormalised) directions, float32.
        layers: layer of each row of ``vectors``.
        positions: negative post-instruction offset of each column.
        domain: the target domain.
        model_fingerprint: fingerprint of the model the residuals came from.
        data_hash: hash of the target and harmless prompts used.
        harmless_norm: [n_layers, n_positions] mean ‖h‖ of harmless residuals (scale reference).
    """

    vectors: torch.Tensor
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    domain: str
    model_fingerprint: str = ""
    data_hash: str = ""
    harmless_norm: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.layers) * len(self.positions)

    def keys(self) -> Iterator[tuple[int, int]]:
        """(layer, position) of every candidate, layer-major."""
        for layer in self.layers:
            for pos in self.positions:
                yield layer, pos

    def vector(self, layer: int, position: int) -> torch.Tensor:
        """The raw direction r[l, p]: [d_model]."""
        return self.vectors[self.layers.index(layer), self.positions.index(position)]

    def units(self) -> torch.Tensor:
        """r̂ for every candidate: [n_layers, n_positions, d_model]."""
        return self.vectors / self.vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def norms(self) -> torch.Tensor:
        """‖r[l, p]‖: [n_layers, n_positions]."""
        return self.vectors.norm(dim=-1)

    def direction(self, layer: int, position: int, **meta) -> Direction:
        """The candidate at (layer, position) as a :class:`Direction` with provenance."""
        return Direction(
            vector=self.vector(layer, position).clone(),
            layer=int(layer),
            position=int(position),
            domain=self.domain,
            model_fingerprint=self.model_fingerprint,
            data_hash=self.data_hash,
            meta={"method": "diff_in_means", "reference": HARMLESS, **meta},
        )


def candidates_from_residuals(
    target: Residuals, harmless: Residuals, domain: str, model_fingerprint: str = "", data_hash: str = ""
) -> Candidates:
    """Difference-of-means candidates from already-collected residuals of the target and harmless prompts."""
    if len(target) == 0 or len(harmless) == 0:
        raise DataError(f"need train prompts of {domain!r} and of {HARMLESS!r} to compute candidate directions")
    if target.layers != harmless.layers or target.positions != harmless.positions:
        raise ValueError("target and harmless residuals were collected at different layers / positions")
    vectors = diff_in_means(target.mean(), harmless.mean())
    return Candidates(
        vectors=vectors,
        layers=tuple(target.layers),
        positions=tuple(target.positions),
        domain=domain,
        model_fingerprint=model_fingerprint,
        data_hash=data_hash,
        harmless_norm=harmless.vectors.norm(dim=-1).mean(0),
    )


def candidate_directions(
    model: ChatModel,
    prompts: PromptSet,
    target: str,
    residuals: Mapping[str, Residuals] | None = None,
    limit: int | None = None,
) -> Candidates:
    """Difference-of-means candidates ``r[l, p]`` of ``target`` vs ``harmless`` on the train split.

    Args:
        model: the chat model.
        prompts: the prompt set.
        target: the target (authorized) domain.
        residuals: train residuals per domain to reuse (the ones missing are collected).
        limit: at most this many train prompts per domain when collecting.

    Returns:
        The candidates; ``vectors`` is [n_layers, n_positions, d_model] (float32, unnormalised) and
        ``harmless_norm`` [n_layers, n_positions].

    Raises:
        UnknownDomainError: ``target`` is not in ``prompts``.
        DataError: ``target`` or ``harmless`` has no train prompts.

    Examples:
        >>> cands = candidate_directions(model, prompts, "cyber")            # doctest: +SKIP
        >>> cands.vectors.shape                                              # doctest: +SKIP
        torch.Size([24, 5, 896])
        >>> direction = cands.direction(14, -1)                              # doctest: +SKIP
    """
    prompts.check_domain(target)
    res = collect_domain_residuals(model, prompts, [target, HARMLESS], limit=limit, have=residuals)
    return candidates_from_residuals(
        res[target], res[HARMLESS], target, model.fingerprint, prompts.data_hash([target, HARMLESS])
    )
