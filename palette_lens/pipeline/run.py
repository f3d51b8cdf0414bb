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
condition fires on); generation is two-phase and batched (:mod:`palette_lens.evaluate.evaluator`); the search
residuals are collected once for every domain and reused for the conditions; profiles are merged copies
that share every unadapted weight with the base model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palette_lens.adapters.baked import BakedAdapter
from palette_lens.baselines.conditional_steering import ConditionalSteering, fit_conditional_steering
from palette_lens.baselines.global_ablation import global_ablation_hooks
from palette_lens.compose.interference import interference
from palette_lens.compose.profiles import (
    Profile,
    check_compose_weight,
    default_profiles,
    merged_profile,
    profile_adapters,
)
from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import BORDERLINE, HARMLESS
from palette_lens.errors import PaletteError
from palette_lens.evaluate.evaluator import EvalConfig, Evaluator
from palette_lens.evaluate.gated import evaluate_gated_profile
from palette_lens.evaluate.latency import measure_latency
from palette_lens.evaluate.results import EvalSet, VariantResult
from palette_lens.gate.config import GateConfig, default_gate_layer
from palette_lens.gate.features import GateFeatureCache
from palette_lens.gate.gated_profile import GatedProfile
from palette_lens.gate.training import fit_gate
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.residuals import collect_residuals
from palette_lens.pipeline.config import DEFAULT_TARGETS, PipelineConfig
from palette_lens.pipeline.documents import build_documents
from palette_lens.pipeline.run_folder import RunFolder, direction_of
from palette_lens.pipeline.search_and_bake import search_and_bake
from palette_lens.search.direction import Direction
from palette_lens.util.atomic import atomic_write_json as write_json
from palette_lens.util.atomic import atomic_write_text

log = logging.getLogger(__name__)

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


def residual_domains(prompts: PromptSet) -> list[str]:
    """The domains whose train residuals a run collects: every harmful domain, harmless, and borderline when
    the data has it (the searches, the target choice and the steering conditions share them)."""
    return [*prompts.harmful_domains, HARMLESS] + ([BORDERLINE] if BORDERLINE in prompts.by_domain else [])


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
    from palette_lens.baselines.conditional_steering import fit_condition

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

    Returns:
        A ``PipelineResult``: ``metrics`` (what ``metrics.json`` holds), ``details`` (``details.json``),
        ``out`` (the run folder) and ``variants`` (name → :class:`VariantResult`).

    Raises:
        PaletteError: a bad setting (composition weight, profile selection, gate settings), no harmful
            domain or no harmless prompts in the data, or a target that is not a harmful domain.
        UnknownDomainError: a target that ``prompts`` does not contain.

    Examples:
        >>> model, prompts = load_model(), load_prompts()                          # doctest: +SKIP
        >>> quick = PipelineConfig.quick_preset()
        >>> result = run_pipeline(model, prompts, "runs/quick", quick)             # doctest: +SKIP
        >>> result.out / "report.html"                                             # doctest: +SKIP
        PosixPath('runs/quick/report.html')
    """
    from palette_lens.search.candidates import collect_domain_residuals

    check_compose_weight(config.compose_weight)  # a bad setting fails before anything is written
    for which in (config.steering_profiles, config.ablation_profiles, config.gate_profiles):
        _profiles_for(which, [])
    gate_config = GateConfig(**config.gate)
    if config.gate_routing not in ("routed", "merged"):
        raise PaletteError(f"unknown gate routing {config.gate_routing!r} (routed or merged)")
    run = RunFolder(out)
    run.clear_summary()
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
    if need_search or config.steering_profiles != "none":
        with timer.stage("residuals"):
            residuals = collect_domain_residuals(model, prompts, residual_domains(prompts), limit=config.n_train)

    targets = list(config.targets) or (list(adapters) or default_targets(prompts, residuals))
    for t in targets:
        prompts.check_domain(t)
        if t not in harmful:
            raise PaletteError(f"target {t!r} is not a harmful domain")
    profiles = list(profiles) if profiles is not None else default_profiles(targets, config.pairs)
    gated_profiles = _profiles_for(config.gate_profiles, profiles)
    if (config.gate_routing == "routed" and gate_config.probe != "domains"
            and any(len(p) > 1 for p in gated_profiles)):
        raise PaletteError("routed gated profiles need the gate's domain probe (gate probe 'domains'), or set "
                           "gate_routing='merged'")

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
        write_json(run.baseline_json, table.to_dict())
        atomic_write_text(run.baseline_md, table.markdown() + "\n")
    base_rates = vanilla.refusal_rate()

    # 2-3. search and bake the targets that have no adapter yet
    searches: dict[str, dict] = {}
    bakes: dict[str, dict] = {}
    to_bake = [t for t in targets if t not in adapters]
    if to_bake:
        made = search_and_bake(
            model, prompts, to_bake, run,
            search=config.search_config(), bake=config.bake_config(),
            residuals=residuals, stage=timer.stage, progress=progress,
        )
        directions.update(made.directions)
        adapters.update(made.adapters)
        searches, bakes = made.searches, made.bakes
    for t in targets:
        if t not in directions:
            directions[t] = direction_of(adapters[t])

    # 4. compose
    with timer.stage("compose"):
        merged = {p.name: merged_profile(model, profile_adapters(p, adapters, config.compose_weight))
                  for p in profiles}
        inter = interference([adapters[t] for t in targets])

    # 5. evaluate profiles
    variants: dict[str, VariantResult] = {"vanilla": vanilla}
    with timer.stage("evaluate"):
        for p in profiles:
            variants[p.name] = evaluator.evaluate_lm(p.name, merged[p.name], p.domains, kind="merged")

    # 6. every selected profile as one gated model (base weights, adapters unmerged, the gate deciding per prompt)
    gated: dict[str, GatedProfile] = {}
    with timer.stage("gated"):
        feature_cache = GateFeatureCache(model)  # the gates share most training prompts: each is read once
        for p in gated_profiles:
            gate_layer = default_gate_layer(model) if gate_config.layer is None else gate_config.layer
            early = [d for d in p.domains if adapters[d].layer_index < gate_layer]
            if early:  # the gate would decide after the adapter ran
                log.warning("profile %s is not evaluated gated: adapter %r sits before the gate's layer %d",
                            p.name, early[0], gate_layer)
                continue
            gate = fit_gate(model, prompts, p.domains, gate_config, feature_cache=feature_cache)
            gate.save(run.gate_dir(p.name))
            gated[p.name] = GatedProfile(model, [adapters[d] for d in p.domains], gate, routing=config.gate_routing,
                                         compose_weight=config.compose_weight)
            variants[f"{p.name} gated"] = evaluate_gated_profile(evaluator, gated[p.name], f"{p.name} gated")

    # 7. baselines
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

    # 8. latency (vanilla vs merged profile vs hook-based steering vs the gated profile, side by side)
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
        if reference.name in gated:
            variants_lat["gated"] = (gated[reference.name].hf_model, ())
        latency = measure_latency(
            model, lat_prompts, variants_lat, config.latency_tokens, config.latency_batch, config.latency_repeats
        )

    # 9. metrics, details, report
    with timer.stage("report"):
        metrics, details = build_documents(
            model, prompts, config, targets, adapters, profiles, variants, baseline_results, reference, base_rates,
            latency, inter, steering, searches, bakes, timings,
        )
        write_json(run.details_json, details)
        if report:
            from palette_lens.report.html import write_report

            write_report(run.report_html, metrics, details)
    timings["report"] = timings.get("report", 0.0)
    metrics["timings_s"] = dict(timings)
    write_json(run.metrics_json, metrics)
    log.info("pipeline done: %s", run.root)
    return PipelineResult(metrics, details, run.root, variants)
