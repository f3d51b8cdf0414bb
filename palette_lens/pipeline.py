"""The whole Palette pipeline: baseline → search → bake → profiles → evaluation (+ baselines) → report.

:func:`run_pipeline` is what ``palette-lens demo`` and ``palette-lens run`` call. It writes into ``out``:

- ``metrics.json``: the stable keys of DESIGN §3 (numbers on the test split);
- ``details.json``: everything else (intervals, first-token scores, F1 details, the floors checked, the
  baselines of every profile, interference, latency runs, conditions, settings);
- ``report.html``: self-contained (inline plotly), tables, figures and truncated example completions;
- ``adapters/<domain>/`` (PEFT format + metadata), ``directions/<domain>.{safetensors,json}``,
  ``search/<domain>.json``, ``baseline.json`` / ``baseline.md``.

Compute plan (generation dominates on a CPU): vanilla completions are generated once and shared by the
baseline table, KL and the conditional-steering baseline (which regenerates only the prompts its
condition fires on); generation is two-phase and batched (:mod:`palette_lens.evaluate`); the search
residuals are collected once for every domain and reused for the conditions; profiles are merged copies
that share every unadapted weight with the base model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .activations import collect_residuals
from .adapters import BakedAdapter
from .atomic import atomic_write_json as write_json
from .atomic import atomic_write_text
from .baselines import ConditionalSteering, fit_conditional_steering, global_ablation_hooks
from .compose import (
    DEFAULT_COMPOSE_WEIGHT,
    Profile,
    check_compose_weight,
    default_profiles,
    interference,
    merged_profile,
    profile_adapters,
)
from .data import BORDERLINE, HARMLESS, PromptSet
from .directions import Direction
from .errors import PaletteError
from .evaluate import EvalConfig, EvalSet, Evaluator, VariantResult, measure_latency
from .gate import GateConfig, evaluate_gated
from .models import ChatModel
from .run_documents import build_documents

log = logging.getLogger(__name__)

#: the default model's three domains whose one-block adapters meet the bake floors (docs/bake.md: cyber,
#: disinformation and hate; bio relaxes but keeps chem, its neighbour, at 55–68%; violence keeps refusing 38–50%)
DEFAULT_TARGETS = ("cyber", "disinformation", "hate")
# Written last, in this order; a folder holding metrics.json is a finished run (a rerun starts clean).
SUMMARY_FILES = ("details.json", "report.html", "metrics.json")
METRICS_KEYS = (
    "model", "n_layers", "domains", "baseline", "adapters", "profiles", "baselines", "latency_ms_per_token",
    "timings_s",
)


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of a pipeline run (``quick()`` and ``full()`` give the two presets).

    Attributes:
        targets: domains to bake (empty: cyber, disinformation, hate when present, else the three harmful
            domains that separate best from the others).
        eval_limit: test prompts per harmful domain (None: all).
        harmless_limit, borderline_limit: test prompts of harmless / borderline (None: all).
        max_new_tokens, batch_size, first_phase: generation settings (:class:`EvalConfig`).
        pairs: "first" (one pair) or "all" (every pair) besides the singles and the triple.
        compose_weight: ΔW weight of each adapter in a profile of two or more domains (default 0.85; 1: the plain sum;
            see :func:`palette_lens.compose.profile_adapters`).
        steering_profiles: profiles evaluated with the run-time conditional steering baseline:
            "reference" (the first single-domain profile), "singles" or "all".
        ablation_profiles: the same for global directional ablation (it answers nearly every harmful prompt
            in full, so it is the most expensive variant).
        gate_profiles: profiles also evaluated behind a domain gate (:mod:`palette_lens.gate`; "none" to skip),
            reported as the ``domain_gate`` baseline; the gates are saved under ``gates/<profile>/``.
        gate: overrides of :class:`palette_lens.gate.GateConfig`.
        n_train: train prompts per domain for residuals / conditions (None: all).
        search: overrides of :class:`palette_lens.search.SearchConfig`.
        bake: overrides of :class:`palette_lens.bake.BakeConfig`.
        latency_tokens, latency_batch, latency_repeats: latency measurement settings.
        widen: points the quality floors are widened by (the quick preset's fewer prompts are noisier).
        cache_generations: keep vanilla generations in the user cache (a rerun on the same model, prompts
            and settings skips the baseline generation).
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
    steering_profiles: str = "all"
    ablation_profiles: str = "reference"
    gate_profiles: str = "reference"
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns: the two JSON documents and where things were written."""

    metrics: dict
    details: dict
    out: Path
    variants: dict[str, VariantResult] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------- helpers
class _Timer:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("stage %s ...", name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 2)
            log.info("stage %s done in %.1f s", name, self.timings[name])


def default_targets(prompts: PromptSet, residuals: Mapping[str, Any] | None = None, n: int = 3) -> list[str]:
    """cyber, disinformation and hate when the data has them; otherwise the ``n`` best-separated harmful domains.

    Separation: balanced accuracy of a one-direction condition (domain vs every other prompt) at the middle
    layer, last post-instruction position, on train residuals.
    """
    harmful = prompts.harmful_domains
    if all(d in harmful for d in DEFAULT_TARGETS[:n]):
        return list(DEFAULT_TARGETS[:n])
    if len(harmful) <= n or not residuals:
        return harmful[:n]
    from .baselines import fit_condition

    any_res = next(iter(residuals.values()))
    layer = any_res.layers[len(any_res.layers) // 2]
    score = {d: fit_condition(d, layer, -1, residuals).calibration["balanced"] for d in harmful if d in residuals}
    return sorted(score, key=lambda d: -score[d])[:n]


def _profiles_for(which: str, profiles: Sequence[Profile]) -> list[Profile]:
    singles = [p for p in profiles if len(p) == 1]
    if which == "reference":
        return singles[:1] or list(profiles[:1])
    if which == "singles":
        return singles
    if which == "all":
        return list(profiles)
    if which == "none":
        return []
    raise PaletteError(f"unknown profile selection {which!r} (reference, singles, all, none)")


# ---------------------------------------------------------------------- the pipeline
def run_pipeline(
    model: ChatModel,
    prompts: PromptSet,
    out: str | Path,
    config: PipelineConfig = PipelineConfig(),
    *,
    adapters: Mapping[str, BakedAdapter] | None = None,
    directions: Mapping[str, Direction] | None = None,
    profiles: Sequence[Profile] | None = None,
    timings: dict[str, float] | None = None,
    progress: bool = True,
    report: bool = True,
) -> PipelineResult:
    """Run the pipeline and write its outputs into ``out``.

    Args:
        model: the base chat model (never modified).
        prompts: the prompt set (built-in and/or user data).
        out: output folder.
        config: settings (:meth:`PipelineConfig.quick_preset` for CI-sized runs).
        adapters: already baked adapters (domain → adapter): search and bake are skipped for them.
        directions: directions of those adapters (for the baselines); read from the adapters when missing.
        profiles: profiles to evaluate (default: singles, pair(s), triple of the targets).
        timings: stage timings measured before (e.g. ``load_model``), included in ``timings_s``.
        progress: progress bars.
        report: write ``report.html``.
    """
    from .candidates import collect_domain_residuals

    check_compose_weight(config.compose_weight)  # a bad setting fails before anything is written
    for which in (config.steering_profiles, config.ablation_profiles, config.gate_profiles):
        _profiles_for(which, [])
    GateConfig(**config.gate)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in SUMMARY_FILES:  # a previous run's summary must not describe this run's (partial) outputs
        (out / name).unlink(missing_ok=True)
    timings = dict(timings or {})
    timer = _Timer(timings)
    adapters = dict(adapters or {})
    directions = dict(directions or {})
    harmful = prompts.harmful_domains
    if not harmful:
        raise PaletteError("the data holds no harmful domain")
    if HARMLESS not in prompts.by_domain:
        raise PaletteError("the data holds no harmless prompts")

    # residuals of every domain (train split): shared by the searches, target choice and conditions
    need_search = [t for t in config.targets if t not in adapters] or (not config.targets and not adapters)
    residuals: dict = {}
    res_domains = [*harmful, HARMLESS] + ([BORDERLINE] if BORDERLINE in prompts.by_domain else [])
    if need_search or config.steering_profiles != "none":
        with timer.stage("residuals"):
            residuals = collect_domain_residuals(model, prompts, res_domains, limit=config.n_train)

    targets = list(config.targets) or (list(adapters) or default_targets(prompts, residuals))
    for t in targets:
        prompts.check_domain(t)
        if t not in harmful:
            raise PaletteError(f"target {t!r} is not a harmful domain")

    # 1. baseline (vanilla generations on the test split, reused by every later stage)
    with timer.stage("baseline"):
        evalset = EvalSet.build(prompts, harmful, "test", config.eval_limit, config.harmless_limit,
                                config.borderline_limit)
        evaluator = Evaluator(
            model, evalset, EvalConfig(config.max_new_tokens, config.batch_size, config.first_phase),
            cache=config.cache_generations,
        )
        vanilla = evaluator.vanilla()
        table = vanilla.baseline_table(model.name, config.max_new_tokens)
        write_json(out / "baseline.json", table.to_dict())
        atomic_write_text(out / "baseline.md", table.markdown() + "\n")
    base_rates = vanilla.refusal_rate()

    # 2. search
    searches: dict[str, dict] = {}
    if any(t not in adapters for t in targets):
        from .search import SearchConfig, search_direction

        with timer.stage("search"):
            scfg = replace(SearchConfig(), **{"n_train": config.n_train, **config.search})
            for t in targets:
                if t in adapters:
                    continue
                result = search_direction(model, prompts, t, residuals=residuals, config=scfg, progress=progress)
                directions[t] = result.chosen
                result.chosen.save(out / "directions", t)
                doc = result.to_json()
                write_json(out / "search" / f"{t}.json", doc)
                searches[t] = {"chosen": doc["chosen"], "fallback": doc["fallback"], "timings_s": doc["timings_s"]}

    # 3. bake
    bakes: dict[str, dict] = {}
    if any(t not in adapters for t in targets):
        from .bake import BakeConfig, bake

        with timer.stage("bake"):
            bcfg = replace(BakeConfig(), **config.bake)
            captured: dict[int, Any] = {}  # block → cached inputs, shared by bakes at the same block
            for t in targets:
                if t in adapters:
                    continue
                block = directions[t].layer - 1
                result = bake(model, directions[t], prompts, bcfg, inputs=captured.get(block), progress=progress)
                captured[block] = result.inputs
                adapters[t] = result.adapter
                folder = result.adapter.save(out / "adapters" / t)
                write_json(folder / "bake.json", {"timings_s": result.timings_s, "val": result.val,
                                                  "baseline_val": result.baseline_val, "history": result.history})
                bakes[t] = {"timings_s": result.timings_s, "val": result.val}
    for t in targets:
        if t not in directions:
            directions[t] = _direction_of(adapters[t], model)

    # 4. compose
    with timer.stage("compose"):
        profiles = list(profiles) if profiles is not None else default_profiles(targets, config.pairs)
        merged = {p.name: merged_profile(model, profile_adapters(p, adapters, config.compose_weight))
                  for p in profiles}
        inter = interference([adapters[t] for t in targets])

    # 5. evaluate profiles
    variants: dict[str, VariantResult] = {"vanilla": vanilla}
    with timer.stage("evaluate"):
        for p in profiles:
            variants[p.name] = evaluator.evaluate_lm(p.name, merged[p.name], p.domains, kind="merged")

    # 6. baselines
    steering: dict[str, ConditionalSteering] = {}
    baseline_results: dict[str, dict[str, VariantResult]] = {"global_ablation": {}, "runtime_steering": {}}
    with timer.stage("baselines"):
        for p in _profiles_for(config.ablation_profiles, profiles):
            hooks = global_ablation_hooks(model, [directions[d] for d in p.domains])
            baseline_results["global_ablation"][p.name] = evaluator.evaluate_hooks(
                f"global_ablation:{p.name}", hooks, p.domains, kind="hooks"
            )
        prompts_flat, _ = evalset.flat()
        steered = _profiles_for(config.steering_profiles, profiles)
        sites = {(directions[d].layer, directions[d].position) for p in steered for d in p.domains}
        eval_residuals = collect_residuals(  # every profile's conditions read these sites: one pass
            model, prompts_flat, layers=sorted({l for l, _ in sites}), positions=sorted({q for _, q in sites}),
            batch_size=32, desc=None,
        ) if sites else None
        for p in steered:
            st = fit_conditional_steering(
                model, prompts, {d: directions[d] for d in p.domains}, residuals=residuals, limit=config.n_train
            )
            steering[p.name] = st
            routes = st.routes(model, prompts_flat, batch_size=32, residuals=eval_residuals)
            baseline_results["runtime_steering"][p.name] = evaluator.evaluate_routed(
                f"runtime_steering:{p.name}", routes, lambda key, st=st: st.hooks_for(model, key), p.domains,
            )
        for p in _profiles_for(config.gate_profiles, profiles):
            baseline_results.setdefault("domain_gate", {})[p.name] = evaluate_gated(
                evaluator, model, prompts, f"domain_gate:{p.name}", p.domains, merged[p.name],
                GateConfig(**config.gate), out / "gates" / p.name)[1]

    # 7. latency (vanilla vs merged profile vs hook-based steering, side by side)
    reference = next(p for p in profiles if len(p) >= 1)
    with timer.stage("latency"):
        lat_prompts = list(evalset.prompts[HARMLESS])
        variants_lat: dict[str, Any] = {
            "vanilla": (evaluator.plain_model, ()),
            "merged": (merged[reference.name], ()),
        }
        st_ref = steering.get(reference.name) or fit_conditional_steering(
            model, prompts, {d: directions[d] for d in reference.domains}, residuals=residuals, limit=config.n_train
        )
        variants_lat["hooked"] = (None, st_ref.runtime_hooks(model))
        variants_lat["bridge_no_hooks"] = (None, ())
        latency = measure_latency(
            model, lat_prompts, variants_lat, config.latency_tokens, config.latency_batch, config.latency_repeats
        )

    # 8. metrics, details, report
    with timer.stage("report"):
        metrics, details = build_documents(
            model, prompts, config, targets, adapters, profiles, variants, baseline_results, reference, base_rates,
            latency, inter, steering, searches, bakes, timings,
        )
        write_json(out / "details.json", details)
        if report:
            from .report import write_report

            write_report(out / "report.html", metrics, details)
    timings["report"] = timings.get("report", 0.0)
    metrics["timings_s"] = dict(timings)
    write_json(out / "metrics.json", metrics)
    log.info("pipeline done: %s", out)
    return PipelineResult(metrics, details, out, variants)


def _direction_of(adapter: BakedAdapter, model: ChatModel) -> Direction:
    if adapter.direction is None:
        raise PaletteError(f"adapter {adapter.domain!r} carries no direction; the baselines need one")
    return Direction(adapter.direction, adapter.layer, int(adapter.meta.get("position", -1)), adapter.domain,
                     model.fingerprint)
