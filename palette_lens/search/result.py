"""What a direction search is run with and what it returns: :class:`SearchConfig` and :class:`SearchResult`.

A result holds every candidate's objectives, the Pareto front and the chosen direction; it saves to and loads
from ``search.json`` plus the chosen direction's files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from palette_lens.errors import PaletteError
from palette_lens.search.candidates import Candidates
from palette_lens.search.direction import Direction
from palette_lens.search.pareto import RetainKind
from palette_lens.util.atomic import atomic_write_text

Intervention = Literal["edit", "ablate"]
ProxyKind = Literal["attribution", "norm", "none"]


@dataclass(frozen=True)
class SearchConfig:
    """Settings of a direction search (all have working defaults).

    Attributes:
        intervention: how candidates are scored causally: "edit" (default) applies the bake's ideal
            one-block edit ``h ← h − s·(h·r̂) r̂`` at ``resid_pre`` of the candidate's layer only (what a
            single-block adapter can do); "ablate" removes r̂ at every layer (Arditi et al.), which also
            works from early layers whose effect later layers would rebuild after a one-block bake.
        edit_scale: s of the "edit" intervention (use the bake's ``scale``).
        alpha: trade-off in ``α·bypass' − (1−α)·retain'`` (1: bypass only, 0: retention only).
        retain: which retention objective the selection uses: "causal" (``retain_N``, non-target refusal
            score under the intervention), "sep" (``sep_N``, target vs non-target separability at the
            baked block's input) or "both" (mean of the two, each min-max scaled). Default (None):
            "sep" under "edit", "both" under "ablate".
        kl_max: largest first-token KL on harmless prompts a chosen direction may have. Default (None):
            0.1 under "ablate" (Arditi et al.); no filter under "edit", where the edit is applied to every
            prompt although the bake keeps harmless prompts neutral (its KL is reported, not filtered).
        bypass_max: largest ``bypass_T`` a chosen direction may have. Default (None): 0.0 under
            "ablate" (the target must comply on average), −2.0 under "edit" (refusal-token mass ≲ 12%
            after the ideal edit: what a bake can only approach). Use ``float("inf")`` to disable.
        drop_last_frac: drop candidates in the last fraction of layers.
        min_layer: smallest layer considered (1: a block l−1 must exist to bake into).
        layers: only these layers (None: every layer the two filters above allow); a refinement round
            (:mod:`palette_lens.bake.refine`) searches the layer of the adapter it refines.
        top_k: candidates scored causally after pruning (None: every candidate, no pruning).
        proxy: pruning proxy: "attribution" (first-order estimate), "norm" (‖r‖ relative to ‖h‖), "none".
        n_val: validation prompts of the target domain and of harmless.
        n_val_other: validation prompts per non-target harmful domain.
        n_train: train prompts per domain for residuals (None: all).
        n_proxy: target (and non-target) validation prompts used by the attribution proxy.
        alphas: α values of the α path (shown on the Pareto plot).
        batch_size: prompts per forward pass.

    Examples:
        >>> cfg = SearchConfig(alpha=0.7, top_k=None).resolved()
        >>> cfg.retain, cfg.kl_max, cfg.bypass_max
        ('sep', inf, -2.0)
        >>> SearchConfig(intervention="ablate").resolved().kl_max
        0.1
    """

    intervention: Intervention = "edit"
    edit_scale: float = 2.5
    alpha: float = 0.5
    retain: RetainKind | None = None
    kl_max: float | None = None
    bypass_max: float | None = None
    drop_last_frac: float = 0.2
    min_layer: int = 1
    layers: tuple[int, ...] | None = None
    top_k: int | None = 10
    proxy: ProxyKind = "attribution"
    n_val: int = 12
    n_val_other: int = 2
    n_train: int | None = None
    n_proxy: int = 6
    alphas: tuple[float, ...] = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
    batch_size: int = 32

    def resolved(self) -> SearchConfig:
        """A copy with the intervention-dependent defaults (``retain``, ``kl_max``, ``bypass_max``) filled in."""
        edit = self.intervention == "edit"
        return replace(
            self,
            retain=self.retain or ("sep" if edit else "both"),
            kl_max=self.kl_max if self.kl_max is not None else (math.inf if edit else 0.1),
            bypass_max=self.bypass_max if self.bypass_max is not None else (-2.0 if edit else 0.0),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alphas"] = list(self.alphas)
        d["layers"] = list(self.layers) if self.layers is not None else None
        for k in ("kl_max", "bypass_max"):  # JSON has no infinity: "no filter" is written as null
            if d[k] is not None and math.isinf(d[k]):
                d[k] = None
        return d


OBJECTIVES = ("bypass_T", "retain_N", "sep_N", "kl_H")
#: per objective, True when larger is better
MAXIMIZE = {"bypass_T": False, "retain_N": True, "retain_min": True, "sep_N": True, "kl_H": False, "retain": True}


@dataclass
class SearchResult:
    """What :func:`palette_lens.search.direction_search.search_direction` returns.

    Attributes:
        target: the target domain.
        candidates: one dict per candidate: ``layer``, ``position``, ``norm``, ``eligible`` (passes the
            layer filter), ``proxy`` (pruning proxy, lower is better: the attribution estimate of
            ``bypass_T`` by default; None when not computed), ``sep_N``, ``evaluated``, and
            for evaluated ones ``bypass_T``, ``retain_N``, ``retain_min``, ``kl_H``, ``retain`` (the
            selection's retention score).
        pareto: the evaluated candidates on the Pareto front of (bypass_T, retain, kl_H).
        chosen: the chosen :class:`Direction` (objectives and settings in ``chosen.meta``).
        vanilla: objectives of the unmodified model on the same validation set.
        alpha_path: for each α, the (layer, position) the selection rule picks.
        config: the settings used.
        fallback: which constraints had to be relaxed (None when the choice passed every filter).
        timings_s: seconds per stage.
        refusal_ids: the refusal token ids of the first-token score.
        n_prompts: prompts per group used (train residuals and validation).
        model: the name of the model searched (:attr:`ChatModel.name`).
        candidate_set: the candidate vectors (kept in memory, not serialised).

    ``grid(objective)`` gives layers, positions and an [n_layers, n_positions] array of one objective;
    ``direction(layer, position)`` any candidate as a :class:`Direction` (only before a save/load round trip).

    Examples:
        >>> found = search_direction(model, prompts, "cyber")                  # doctest: +SKIP
        >>> found.chosen.layer, found.chosen.position                         # doctest: +SKIP
        (14, -1)
        >>> found.save("runs/demo/search/cyber")                              # doctest: +SKIP
        >>> again = SearchResult.load("runs/demo/search/cyber")               # doctest: +SKIP
    """

    target: str
    candidates: list[dict]
    pareto: list[dict]
    chosen: Direction
    vanilla: dict
    alpha_path: list[dict]
    config: SearchConfig
    fallback: str | None = None
    timings_s: dict = field(default_factory=dict)
    refusal_ids: list[int] = field(default_factory=list)
    n_prompts: dict = field(default_factory=dict)
    model: str = ""
    candidate_set: Candidates | None = field(default=None, repr=False)

    @property
    def chosen_row(self) -> dict:
        return next(c for c in self.candidates if (c["layer"], c["position"]) == (self.chosen.layer, self.chosen.position))

    def direction(self, layer: int, position: int) -> Direction:
        """Any candidate as a :class:`Direction` (needs the in-memory candidate set)."""
        if self.candidate_set is None:
            raise PaletteError("this search result was loaded from disk; only the chosen direction is available")
        return self.candidate_set.direction(layer, position, search_target=self.target)

    def grid(self, objective: str) -> tuple[list[int], list[int], np.ndarray]:
        """Layers, positions and an [n_layers, n_positions] array of one objective (NaN where missing)."""
        layers = sorted({c["layer"] for c in self.candidates})
        positions = sorted({c["position"] for c in self.candidates})
        arr = np.full((len(layers), len(positions)), np.nan)
        for c in self.candidates:
            v = c.get(objective)
            if v is not None:
                arr[layers.index(c["layer"]), positions.index(c["position"])] = v
        return layers, positions, arr

    def to_json(self) -> dict:
        """A JSON-serialisable dict with keys ``candidates``, ``pareto``, ``chosen`` and the context."""
        return {
            "target": self.target,
            "model": self.model,
            "candidates": [_clean(c) for c in self.candidates],
            "pareto": [_clean(c) for c in self.pareto],
            "chosen": {**self.chosen.provenance(), "objectives": _clean(self.chosen_row)},
            "vanilla": _clean(self.vanilla),
            "alpha_path": self.alpha_path,
            "config": self.config.to_dict(),
            "fallback": self.fallback,
            "timings_s": self.timings_s,
            "refusal_ids": self.refusal_ids,
            "n_prompts": self.n_prompts,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``search.json`` and ``directions/<target>.safetensors/.json`` into ``folder``; returns the JSON path."""
        folder = Path(folder)
        self.chosen.save(folder / "directions", self.target)
        path = folder / "search.json"
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path, target: str | None = None) -> SearchResult:
        """Read a saved search (``search.json`` + the chosen direction) back."""
        folder = Path(folder)
        path = folder / "search.json"
        if not path.is_file():
            raise PaletteError(f"no search.json in {folder}")
        d = json.loads(path.read_text())
        if target is not None and d["target"] != target:
            raise PaletteError(f"{path} holds the search for {d['target']!r}, not {target!r}")
        chosen = Direction.load(folder / "directions" / f"{d['target']}.json")
        cfg = dict(d.get("config", {}))
        cfg["alphas"] = tuple(cfg.get("alphas", SearchConfig.alphas))
        if cfg.get("layers") is not None:
            cfg["layers"] = tuple(cfg["layers"])
        return cls(
            target=d["target"],
            candidates=d["candidates"],
            pareto=d["pareto"],
            chosen=chosen,
            vanilla=d.get("vanilla", {}),
            alpha_path=d.get("alpha_path", []),
            config=SearchConfig(**cfg).resolved(),
            fallback=d.get("fallback"),
            timings_s=d.get("timings_s", {}),
            refusal_ids=d.get("refusal_ids", []),
            n_prompts=d.get("n_prompts", {}),
            model=d.get("model", ""),
        )


def _clean(d: dict) -> dict:
    """Floats rounded, NaN → None (JSON has no NaN)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = None if math.isnan(v) else round(v, 6)
        else:
            out[k] = v
    return out
