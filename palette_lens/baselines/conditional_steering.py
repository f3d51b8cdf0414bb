"""Run-time conditional steering (a comparison method): a per-domain condition on the residual stream decides, per prompt, which refusal directions are ablated by hooks during generation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from palette_lens.baselines.global_ablation import global_ablation_hooks, orthonormal_basis
from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import BORDERLINE, HARMLESS
from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel, Hook
from palette_lens.models.residuals import Residuals, collect_residuals
from palette_lens.search.direction import Direction

# ---------------------------------------------------------------------- conditions
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Condition:
    """Whether a prompt belongs to a domain, read from one residual-stream site.

    ``fires(h) = (h − centre)·v > threshold`` with h the ``resid_pre`` of ``layer`` at ``position``.

    Attributes:
        domain: the domain it detects.
        layer, position: where it reads the residual stream.
        vector: [d_model] unit condition vector (domain mean minus the mean of the other prompts).
        centre: [d_model] midpoint of the two means.
        threshold: calibrated threshold on the centred projection.
        calibration: accuracies on the calibration prompts (``tpr``, ``tnr``, ``balanced``, ``n_pos``, ``n_neg``).
    """

    domain: str
    layer: int
    position: int
    vector: torch.Tensor
    centre: torch.Tensor
    threshold: float
    calibration: dict = field(default_factory=dict)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """Centred projections: [n, d_model] → [n]."""
        return (h.float() - self.centre.to(h.device)) @ self.vector.to(h.device)

    def fires(self, h: torch.Tensor) -> torch.Tensor:
        """[n, d_model] → [n] bool."""
        return self.score(h) > self.threshold

    def to_dict(self) -> dict:
        return {
            "domain": self.domain, "layer": self.layer, "position": self.position,
            "threshold": self.threshold, "calibration": self.calibration,
        }


def _best_threshold(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, dict]:
    """The threshold maximising balanced accuracy (ties: the larger, i.e. the more conservative one)."""
    values = torch.cat([pos, neg]).sort().values
    cands = torch.cat([values[:1] - 1.0, (values[1:] + values[:-1]) / 2, values[-1:] + 1.0])
    best = (-1.0, 0.0, {})
    for t in cands.tolist():
        tpr = float((pos > t).float().mean())
        tnr = float((neg <= t).float().mean())
        bal = 0.5 * (tpr + tnr)
        if bal >= best[0]:
            best = (bal, t, {"tpr": tpr, "tnr": tnr, "balanced": bal})
    _, t, stats = best
    return t, {**stats, "n_pos": int(pos.numel()), "n_neg": int(neg.numel())}


def fit_condition(
    domain: str,
    layer: int,
    position: int,
    residuals: Mapping[str, Residuals],
) -> Condition:
    """Fit a :class:`Condition` for ``domain`` from residuals of every domain (e.g. the train split).

    Args:
        domain: the domain to detect.
        layer: the site's layer (must be present in the residuals).
        position: the site's position (must be present in the residuals).
        residuals: domain → :class:`Residuals` containing ``(layer, position)``; every other domain
            (harmful, harmless, borderline) is a negative.
    """
    if domain not in residuals:
        raise PaletteError(f"no residuals for {domain!r} to calibrate its condition")
    pos = residuals[domain].at(layer, position).float()
    negs = [r.at(layer, position).float() for d, r in residuals.items() if d != domain and len(r)]
    if not negs or not len(pos):
        raise PaletteError(f"cannot calibrate a condition for {domain!r}: need prompts of it and of other domains")
    neg = torch.cat(negs)
    mu_p, mu_n = pos.double().mean(0), neg.double().mean(0)
    vec = (mu_p - mu_n).float()
    vec = vec / vec.norm().clamp_min(1e-12)
    centre = ((mu_p + mu_n) / 2).float()
    cond = Condition(domain, layer, position, vec, centre, 0.0)
    t, stats = _best_threshold(cond.score(pos), cond.score(neg))
    return Condition(domain, layer, position, vec, centre, t, stats)


# ---------------------------------------------------------------------- conditional steering
@dataclass
class ConditionalSteering:
    """Run-time conditional steering for a profile: per authorized domain, a condition and a direction.

    Attributes:
        conditions: one :class:`Condition` per authorized domain.
        directions: domain → the :class:`Direction` ablated (at every layer) when its condition fires.

    ``gates(model, prompts)`` gives which conditions fire, [n_prompts, n_conditions] bool; ``routes`` the
    fired domains per prompt; ``runtime_hooks(model)`` hooks that decide and steer in one generation.

    Examples:
        >>> steering = fit_conditional_steering(model, prompts, {"cyber": found.chosen})   # doctest: +SKIP
        >>> steering.routes(model, ["Write a port scanner.", "Bake bread."])              # doctest: +SKIP
        [('cyber',), None]
        >>> model.generate(["Write a port scanner."], hooks=steering.runtime_hooks(model))  # doctest: +SKIP
    """

    conditions: list[Condition]
    directions: dict[str, Direction]

    @property
    def domains(self) -> list[str]:
        return [c.domain for c in self.conditions]

    # ---- deciding on prompts
    def gates(
        self, model: ChatModel, prompts: Sequence[str], batch_size: int = 32, residuals: Residuals | None = None
    ) -> torch.Tensor:
        """Which conditions fire on each prompt: [n_prompts, n_conditions] bool (one forward to the deepest site).

        ``residuals`` of exactly these prompts holding every condition's site skip the forward pass (several
        profiles read the same sites).
        """
        res = residuals
        if res is None or len(res) != len(prompts) or any(
            c.layer not in res.layers or c.position not in res.positions for c in self.conditions
        ):
            layers = sorted({c.layer for c in self.conditions})
            positions = sorted({c.position for c in self.conditions})
            res = collect_residuals(model, prompts, layers=layers, positions=positions, batch_size=batch_size, desc=None)
        cols = [c.fires(res.at(c.layer, c.position)) for c in self.conditions]
        return torch.stack(cols, dim=1) if cols else torch.zeros(len(prompts), 0, dtype=torch.bool)

    def routes(
        self, model: ChatModel, prompts: Sequence[str], batch_size: int = 32, residuals: Residuals | None = None
    ) -> list[tuple[str, ...] | None]:
        """Per prompt, the domains whose condition fires (None when none does)."""
        g = self.gates(model, prompts, batch_size, residuals)
        out: list[tuple[str, ...] | None] = []
        for row in g.tolist():
            fired = tuple(d for d, f in zip(self.domains, row) if f)
            out.append(fired or None)
        return out

    def hooks_for(self, model: ChatModel, fired: Sequence[str]) -> list[Hook]:
        """Ablation hooks for prompts on which ``fired`` domains' conditions fired."""
        return global_ablation_hooks(model, [self.directions[d] for d in fired])

    # ---- single-pass run-time hooks
    def runtime_hooks(self, model: ChatModel) -> list[Hook]:
        """Hooks that decide and steer in the same generation, per sequence of the batch.

        During the prompt's forward pass (more than one new token), the condition is read at its layer and
        position and stored per sequence; from that layer on, and at every layer for every generated token
        (one token at a time through the KV cache), fired sequences get their domains' directions
        ablated. Layers before the condition's layer are not ablated for the prompt tokens (the decision is
        not known yet there); :meth:`routes` + :meth:`hooks_for` ablate those too.
        """
        n = len(self.conditions)
        # one orthonormal basis per non-empty subset of conditions, indexed by bitmask
        bases: dict[int, torch.Tensor] = {}
        for mask in range(1, 2**n):
            vecs = [self.directions[c.domain].vector for k, c in enumerate(self.conditions) if mask >> k & 1]
            bases[mask] = orthonormal_basis(vecs)
        state: dict[str, torch.Tensor | None] = {"gate": None}
        by_layer: dict[int, list[int]] = {}
        for k, c in enumerate(self.conditions):
            by_layer.setdefault(c.layer, []).append(k)

        def ablate(act: torch.Tensor) -> torch.Tensor:
            gate = state["gate"]
            if gate is None or gate.shape[0] != act.shape[0] or not bool(gate.any()):
                return act
            code = (gate.long() * (2 ** torch.arange(n, device=gate.device))).sum(-1)
            out = act.clone()
            for mask in code.unique().tolist():
                if mask == 0:
                    continue
                rows = (code == mask).nonzero().flatten().to(act.device)
                q = bases[mask].to(device=act.device, dtype=torch.float32)
                h = act[rows].to(torch.float32)
                out[rows] = (h - (h @ q.T) @ q).to(act.dtype)
            return out

        def make(layer: int | None):
            def hook(act: torch.Tensor, hook=None) -> torch.Tensor:  # noqa: ARG001
                prefill = act.shape[1] > 1
                if layer == 0 and prefill:
                    state["gate"] = torch.zeros(act.shape[0], n, dtype=torch.bool)
                if prefill and layer in by_layer:
                    for k in by_layer[layer]:
                        c = self.conditions[k]
                        state["gate"][:, k] = c.fires(act[:, c.position].detach()).cpu()  # type: ignore[index]
                return ablate(act)

            return hook

        hooks = [(model.resid_pre_hook(l), make(l)) for l in range(model.n_layers)]
        hooks.append((f"blocks.{model.n_layers - 1}.hook_out", make(None)))
        self._state = state
        return hooks

    def to_dict(self) -> dict:
        return {"conditions": [c.to_dict() for c in self.conditions]}


def fit_conditional_steering(
    model: ChatModel,
    prompts: PromptSet,
    directions: Mapping[str, Direction],
    residuals: Mapping[str, Residuals] | None = None,
    part: str = "train",
    limit: int | None = None,
    batch_size: int = 32,
) -> ConditionalSteering:
    """Calibrate conditional steering for the authorized domains in ``directions``.

    Each domain's condition reads the residual stream where its direction was found (layer, position);
    the threshold maximises balanced accuracy between that domain and every other domain (harmful,
    harmless, borderline) on ``part`` prompts.

    Args:
        model: the chat model.
        prompts: the prompt set.
        directions: authorized domain → its refusal direction.
        residuals: residuals already collected on ``part`` (domain → :class:`Residuals` with the needed
            layers and positions); missing domains are collected here.
        part: split part used for calibration.
        limit: at most this many prompts per domain when collecting.
        batch_size: prompts per forward pass when collecting.

    Returns:
        A :class:`ConditionalSteering` with one calibrated condition per domain of ``directions`` (its
        ``vector`` and ``centre`` are [d_model]).

    Raises:
        PaletteError: no directions, or a domain without prompts to calibrate on.

    Examples:
        >>> steering = fit_conditional_steering(model, prompts, {"cyber": found.chosen})  # doctest: +SKIP
        >>> steering.conditions[0].calibration["balanced"]                               # doctest: +SKIP
        0.97
    """
    if not directions:
        raise PaletteError("conditional steering needs at least one authorized domain")
    sites = sorted({(d.layer, d.position) for d in directions.values()})
    layers = sorted({l for l, _ in sites})
    positions = sorted({p for _, p in sites})
    domains = [*prompts.harmful_domains, HARMLESS] + ([BORDERLINE] if BORDERLINE in prompts.by_domain else [])
    have = dict(residuals or {})
    res: dict[str, Residuals] = {}
    for d in domains:
        r = have.get(d)
        if r is not None and all(l in r.layers for l in layers) and all(p in r.positions for p in positions):
            res[d] = r
        else:
            res[d] = collect_residuals(
                model, prompts.part(d, part, limit), layers=layers, positions=positions, batch_size=batch_size,
                desc=None,
            )
    conditions = [fit_condition(dom, d.layer, d.position, res) for dom, d in directions.items()]
    for c in conditions:
        log.info("condition %s at layer %d pos %d: balanced accuracy %.2f (tpr %.2f, tnr %.2f)",
                 c.domain, c.layer, c.position, c.calibration["balanced"], c.calibration["tpr"], c.calibration["tnr"])
    return ConditionalSteering(conditions, dict(directions))
