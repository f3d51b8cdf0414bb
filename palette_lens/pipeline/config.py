"""Settings of a pipeline run: :class:`PipelineConfig` (full and quick presets) and the default targets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from palette_lens.compose.profiles import DEFAULT_COMPOSE_WEIGHT

if TYPE_CHECKING:
    from palette_lens.bake.config import BakeConfig
    from palette_lens.search.result import SearchConfig

#: the default model's three domains whose one-block adapters meet the bake floors (docs/results.md: cyber,
#: disinformation and hate; bio relaxes but keeps chem, its neighbour, at 55–68%; violence keeps refusing 38–50%)
DEFAULT_TARGETS = ("cyber", "disinformation", "hate")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of a pipeline run (``quick_preset()`` and ``full()`` give the two presets).

    Attributes:
        targets: domains to bake (empty: cyber, disinformation, hate when present, else the three harmful
            domains that separate best from the others).
        eval_limit: test prompts per harmful domain (None: all).
        harmless_limit: test prompts of harmless (None: twice ``eval_limit``; all when that is None too).
        borderline_limit: test prompts of borderline (None: ``eval_limit``).
        max_new_tokens: generation setting (:class:`EvalConfig`): greedy tokens per completion.
        batch_size: generation setting: sequences per generate call.
        first_phase: generation setting: tokens every prompt gets before unfinished ones are continued.
        pairs: "first" (one pair) or "all" (every pair) besides the singles and the triple.
        compose_weight: ΔW weight of each adapter in a profile of two or more domains (default 0.85; 1: the plain sum;
            see :func:`palette_lens.compose.profiles.profile_adapters`).
        steering_profiles: profiles evaluated with the run-time conditional steering baseline:
            "reference" (the first single-domain profile), "singles" (the default) or "all".
        ablation_profiles: the same for global directional ablation (it answers nearly every harmful prompt
            in full, so it is the most expensive variant).
        gate_profiles: profiles also evaluated as one gated model (:class:`palette_lens.gate.gated_profile.GatedProfile`:
            the base model, the adapters unmerged, the domain gate deciding per prompt): "all" (the default),
            "singles", "reference" or "none"; reported as each profile's ``gated`` entry, the gates saved under
            ``gates/<profile>/``.
        gate_routing: how a gated profile of several domains applies its deltas: "routed" (the default; each prompt
            the gate opens for gets the delta of the domain the gate reads it as) or "merged" (all of them at
            ``compose_weight``).
        gate: overrides of :class:`palette_lens.gate.config.GateConfig`.
        n_train: train prompts per domain for residuals / conditions (None: all).
        search: overrides of :class:`palette_lens.search.result.SearchConfig`.
        bake: overrides of :class:`palette_lens.bake.config.BakeConfig`.
        latency_tokens: latency measurement setting: tokens generated per run.
        latency_batch: latency measurement setting: sequences per run.
        latency_repeats: latency measurement setting: timed runs per variant.
        widen: points the quality floors are widened by (the quick preset's fewer prompts are noisier).
        quick: whether this is the quick preset (recorded in the outputs).
        cache_generations: keep vanilla generations in the user cache (a rerun on the same model, prompts
            and settings skips the baseline generation).

    Examples:
        >>> cfg = PipelineConfig.quick_preset(targets=("cyber",))
        >>> cfg.eval_limit, cfg.widen, cfg.quick
        (12, 0.1, True)
        >>> PipelineConfig.full(compose_weight=1.0).eval_limit
        40
    """

    targets: tuple[str, ...] = ()
    eval_limit: int | None = 40
    harmless_limit: int | None = 60
    borderline_limit: int | None = 40
    max_new_tokens: int = 64
    batch_size: int = 64
    first_phase: int = 12
    pairs: str = "first"
    compose_weight: float = DEFAULT_COMPOSE_WEIGHT
    steering_profiles: str = "singles"
    ablation_profiles: str = "reference"
    gate_profiles: str = "all"
    gate_routing: str = "routed"
    gate: dict = field(default_factory=dict)
    n_train: int | None = None
    search: dict = field(default_factory=dict)
    bake: dict = field(default_factory=dict)
    latency_tokens: int = 16
    latency_batch: int = 4
    latency_repeats: int = 3
    widen: float = 0.0
    quick: bool = False
    cache_generations: bool = True

    @classmethod
    def full(cls, **overrides: Any) -> PipelineConfig:
        return replace(cls(), **overrides)

    @classmethod
    def quick_preset(cls, **overrides: Any) -> PipelineConfig:
        """Fewer prompts everywhere (for CI); floors widened by 10 points."""
        base = cls(
            eval_limit=12,
            harmless_limit=24,
            borderline_limit=12,
            steering_profiles="singles",
            search={"top_k": 6},
            latency_tokens=12,
            latency_repeats=3,
            widen=0.10,
            quick=True,
        )
        return replace(base, **overrides)

    def search_config(self) -> SearchConfig:
        """The :class:`~palette_lens.search.result.SearchConfig` of this run's direction searches."""
        from palette_lens.search.result import SearchConfig

        return replace(SearchConfig(), **{"n_train": self.n_train, **self.search})

    def bake_config(self) -> BakeConfig:
        """The :class:`~palette_lens.bake.config.BakeConfig` of this run's bakes."""
        from palette_lens.bake.config import BakeConfig

        return replace(BakeConfig(), **self.bake)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d
