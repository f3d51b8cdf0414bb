"""palette-lens: domain-selective refusal relaxation (Palette) for notebooks and the command line.

The public API, one stage after the other: load a chat model, read prompts, collect residuals, search a
refusal direction, bake it into a single-block LoRA adapter, compose adapters into authorization profiles,
put a domain gate in front, evaluate, and write a run folder with its report. Plots live in :mod:`palette_lens.viz`
(``pl.viz``) and notebook widgets in ``pl.widgets``.

Every name is imported on first use (PEP 562), so ``import palette_lens`` is fast and loads no torch.

Example:
    >>> import palette_lens as pl
    >>> model = pl.load_model()                                   # doctest: +SKIP
    >>> prompts = pl.load_prompts()                               # doctest: +SKIP
    >>> found = pl.search_direction(model, prompts, "cyber")      # doctest: +SKIP
    >>> baked = pl.bake_direction(model, found.chosen, prompts)   # doctest: +SKIP
    >>> profile = pl.merged_profile(model, [baked.adapter])       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name → the module that defines it (imported lazily by :func:`__getattr__`).
_EXPORTS: dict[str, str] = {
    "PaletteError": "palette_lens.errors",
    "DataError": "palette_lens.errors",
    "UnknownDomainError": "palette_lens.errors",
    "ModelLoadError": "palette_lens.errors",
    "IntegrityError": "palette_lens.errors",
    "ChatTemplateError": "palette_lens.errors",
    "AdapterMismatchError": "palette_lens.errors",
    "truncate": "palette_lens.util.text",
    "ChatModel": "palette_lens.models.chat_model",
    "load_model": "palette_lens.models.loading",
    "wrap_model": "palette_lens.models.loading",
    "tiny_chat_model": "palette_lens.models.tiny",
    "Residuals": "palette_lens.models.residuals",
    "collect_residuals": "palette_lens.models.residuals",
    "ablation_hooks": "palette_lens.models.hooks",
    "addition_hooks": "palette_lens.models.hooks",
    "ablate": "palette_lens.models.hooks",
    "add": "palette_lens.models.hooks",
    "HARMLESS": "palette_lens.data.records",
    "BORDERLINE": "palette_lens.data.records",
    "RESERVED": "palette_lens.data.records",
    "Record": "palette_lens.data.records",
    "PromptSet": "palette_lens.data.prompt_set",
    "load_prompts": "palette_lens.data.prompts",
    "read_jsonl": "palette_lens.data.records",
    "AttackPrompt": "palette_lens.data.attacks",
    "build_attacks": "palette_lens.data.attacks",
    "attacks_from_prompt_set": "palette_lens.data.attacks",
    "profession_framed": "palette_lens.data.attacks",
    "roleplay_wrapped": "palette_lens.data.attacks",
    "mixed_with_target": "palette_lens.data.attacks",
    "RefusalTokens": "palette_lens.refusal.tokens",
    "derive_refusal_tokens": "palette_lens.refusal.tokens",
    "opener_tokens": "palette_lens.refusal.tokens",
    "is_refusal": "palette_lens.refusal.judge",
    "refusal_rate": "palette_lens.refusal.judge",
    "refusal_scores": "palette_lens.refusal.tokens",
    "first_token_kl": "palette_lens.refusal.tokens",
    "Generations": "palette_lens.generation.greedy",
    "generate_completions": "palette_lens.generation.greedy",
    "collect_domain_residuals": "palette_lens.search.candidates",
    "candidate_directions": "palette_lens.search.candidates",
    "Direction": "palette_lens.search.direction",
    "diff_in_means": "palette_lens.search.direction",
    "SearchConfig": "palette_lens.search.result",
    "SearchResult": "palette_lens.search.result",
    "search_direction": "palette_lens.search.direction_search",
    "layer_separation": "palette_lens.geometry.separation",
    "separation_table": "palette_lens.geometry.separation",
    "tsne_layers": "palette_lens.geometry.separation",
    "BakedAdapter": "palette_lens.adapters.baked",
    "load_adapter": "palette_lens.adapters.baked",
    "apply_adapters": "palette_lens.adapters.apply",
    "adapters_applied": "palette_lens.adapters.apply",
    "merged_hf_model": "palette_lens.adapters.apply",
    "BakeConfig": "palette_lens.bake.config",
    "BakeResult": "palette_lens.bake.train",
    "bake_direction": "palette_lens.bake.train",
    "Inspection": "palette_lens.bake.inspect",
    "inspect_adapter": "palette_lens.bake.inspect",
    "refine": "palette_lens.bake.refine",
    "Profile": "palette_lens.compose.profiles",
    "default_profiles": "palette_lens.compose.profiles",
    "profile_adapters": "palette_lens.compose.profiles",
    "merged_profile": "palette_lens.compose.profiles",
    "runtime_profile": "palette_lens.compose.profiles",
    "profile_chat_model": "palette_lens.compose.profiles",
    "interference": "palette_lens.compose.interference",
    "leakage_matrix": "palette_lens.compose.interference",
    "export_profile": "palette_lens.compose.export",
    "profile_peft_adapter": "palette_lens.compose.peft_export",
    "save_peft_adapter": "palette_lens.compose.peft_export",
    "GateConfig": "palette_lens.gate.config",
    "DomainGate": "palette_lens.gate.domain_gate",
    "generate_gated": "palette_lens.gate.domain_gate",
    "GatedProfile": "palette_lens.gate.gated_profile",
    "Router": "palette_lens.gate.router",
    "fit_gate": "palette_lens.gate.training",
    "GateFeatureCache": "palette_lens.gate.features",
    "global_ablation_hooks": "palette_lens.baselines.global_ablation",
    "fit_conditional_steering": "palette_lens.baselines.conditional_steering",
    "ConditionalSteering": "palette_lens.baselines.conditional_steering",
    "EvalConfig": "palette_lens.evaluate.evaluator",
    "Evaluator": "palette_lens.evaluate.evaluator",
    "EvalSet": "palette_lens.evaluate.results",
    "VariantResult": "palette_lens.evaluate.results",
    "baseline_refusal": "palette_lens.evaluate.vanilla",
    "check_floors": "palette_lens.evaluate.floors",
    "recommend_deployment": "palette_lens.evaluate.floors",
    "evaluate_gated": "palette_lens.evaluate.gated",
    "evaluate_gated_profile": "palette_lens.evaluate.gated",
    "AttackConfig": "palette_lens.evaluate.leakage",
    "measure_leakage": "palette_lens.evaluate.leakage",
    "measure_latency": "palette_lens.evaluate.latency",
    "UtilityConfig": "palette_lens.evaluate.utility",
    "UtilityResult": "palette_lens.evaluate.utility",
    "measure_utility": "palette_lens.evaluate.utility",
    "check_solution": "palette_lens.evaluate.humaneval",
    "scores_by_domain": "palette_lens.evaluate.compare",
    "mean_scores": "palette_lens.evaluate.compare",
    "completions_side_by_side": "palette_lens.evaluate.compare",
    "refusal_rates": "palette_lens.evaluate.compare",
    "PipelineConfig": "palette_lens.pipeline.config",
    "run_pipeline": "palette_lens.pipeline.run",
    "RunFolder": "palette_lens.pipeline.run_folder",
    "search_and_bake": "palette_lens.pipeline.search_and_bake",
    "RunArtifacts": "palette_lens.pipeline.runs",
    "load_run": "palette_lens.pipeline.runs",
    "make_run": "palette_lens.pipeline.runs",
    "load_or_make_run": "palette_lens.pipeline.runs",
    "make_builtin_run": "palette_lens.pipeline.builtin",
    "verify_builtin_run": "palette_lens.pipeline.builtin",
    "write_report": "palette_lens.report.html",
}
#: namespaces: ``pl.viz`` (plotly figures) and ``pl.widgets`` (ipywidgets for notebooks).
_NAMESPACES: dict[str, str] = {
    "viz": "palette_lens.viz",
    "widgets": "palette_lens.viz.widgets",
}

__all__ = [  # noqa: RUF022 - grouped by pipeline stage, as in _EXPORTS
    "__version__",
    "PaletteError",
    "DataError",
    "UnknownDomainError",
    "ModelLoadError",
    "IntegrityError",
    "ChatTemplateError",
    "AdapterMismatchError",
    "truncate",
    "ChatModel",
    "load_model",
    "wrap_model",
    "tiny_chat_model",
    "Residuals",
    "collect_residuals",
    "ablation_hooks",
    "addition_hooks",
    "ablate",
    "add",
    "HARMLESS",
    "BORDERLINE",
    "RESERVED",
    "Record",
    "PromptSet",
    "load_prompts",
    "read_jsonl",
    "AttackPrompt",
    "build_attacks",
    "attacks_from_prompt_set",
    "profession_framed",
    "roleplay_wrapped",
    "mixed_with_target",
    "RefusalTokens",
    "derive_refusal_tokens",
    "opener_tokens",
    "is_refusal",
    "refusal_rate",
    "refusal_scores",
    "first_token_kl",
    "Generations",
    "generate_completions",
    "collect_domain_residuals",
    "candidate_directions",
    "Direction",
    "diff_in_means",
    "SearchConfig",
    "SearchResult",
    "search_direction",
    "layer_separation",
    "separation_table",
    "tsne_layers",
    "BakedAdapter",
    "load_adapter",
    "apply_adapters",
    "adapters_applied",
    "merged_hf_model",
    "BakeConfig",
    "BakeResult",
    "bake_direction",
    "Inspection",
    "inspect_adapter",
    "refine",
    "Profile",
    "default_profiles",
    "profile_adapters",
    "merged_profile",
    "runtime_profile",
    "profile_chat_model",
    "interference",
    "leakage_matrix",
    "export_profile",
    "profile_peft_adapter",
    "save_peft_adapter",
    "GateConfig",
    "DomainGate",
    "generate_gated",
    "GatedProfile",
    "Router",
    "fit_gate",
    "GateFeatureCache",
    "global_ablation_hooks",
    "fit_conditional_steering",
    "ConditionalSteering",
    "EvalConfig",
    "Evaluator",
    "EvalSet",
    "VariantResult",
    "baseline_refusal",
    "check_floors",
    "recommend_deployment",
    "evaluate_gated",
    "evaluate_gated_profile",
    "AttackConfig",
    "measure_leakage",
    "measure_latency",
    "UtilityConfig",
    "UtilityResult",
    "measure_utility",
    "check_solution",
    "scores_by_domain",
    "mean_scores",
    "completions_side_by_side",
    "refusal_rates",
    "PipelineConfig",
    "run_pipeline",
    "RunFolder",
    "search_and_bake",
    "RunArtifacts",
    "load_run",
    "make_run",
    "load_or_make_run",
    "make_builtin_run",
    "verify_builtin_run",
    "write_report",
    "viz",
    "widgets",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first access (PEP 562) and keep it in the module's namespace."""
    if name in _NAMESPACES:
        value: Any = importlib.import_module(_NAMESPACES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("palette-lens")
        except PackageNotFoundError:  # a source tree that is not installed
            value = "0+unknown"
    else:
        raise AttributeError(f"module 'palette_lens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs only; at run time names are imported on first access

    from palette_lens import viz
    from palette_lens.adapters.apply import adapters_applied, apply_adapters, merged_hf_model
    from palette_lens.adapters.baked import BakedAdapter, load_adapter
    from palette_lens.bake.config import BakeConfig
    from palette_lens.bake.inspect import Inspection, inspect_adapter
    from palette_lens.bake.refine import refine
    from palette_lens.bake.train import BakeResult, bake_direction
    from palette_lens.baselines.conditional_steering import ConditionalSteering, fit_conditional_steering
    from palette_lens.baselines.global_ablation import global_ablation_hooks
    from palette_lens.compose.export import export_profile
    from palette_lens.compose.interference import interference, leakage_matrix
    from palette_lens.compose.peft_export import profile_peft_adapter, save_peft_adapter
    from palette_lens.compose.profiles import (
        Profile,
        default_profiles,
        merged_profile,
        profile_adapters,
        profile_chat_model,
        runtime_profile,
    )
    from palette_lens.data.attacks import (
        AttackPrompt,
        attacks_from_prompt_set,
        build_attacks,
        mixed_with_target,
        profession_framed,
        roleplay_wrapped,
    )
    from palette_lens.data.prompt_set import PromptSet
    from palette_lens.data.prompts import load_prompts
    from palette_lens.data.records import BORDERLINE, HARMLESS, RESERVED, Record, read_jsonl
    from palette_lens.errors import (
        AdapterMismatchError,
        ChatTemplateError,
        DataError,
        IntegrityError,
        ModelLoadError,
        PaletteError,
        UnknownDomainError,
    )
    from palette_lens.evaluate.compare import (
        completions_side_by_side,
        mean_scores,
        refusal_rates,
        scores_by_domain,
    )
    from palette_lens.evaluate.evaluator import EvalConfig, Evaluator
    from palette_lens.evaluate.floors import check_floors, recommend_deployment
    from palette_lens.evaluate.gated import evaluate_gated, evaluate_gated_profile
    from palette_lens.evaluate.humaneval import check_solution
    from palette_lens.evaluate.latency import measure_latency
    from palette_lens.evaluate.leakage import AttackConfig, measure_leakage
    from palette_lens.evaluate.results import EvalSet, VariantResult
    from palette_lens.evaluate.utility import UtilityConfig, UtilityResult, measure_utility
    from palette_lens.evaluate.vanilla import baseline_refusal
    from palette_lens.gate.config import GateConfig
    from palette_lens.gate.domain_gate import DomainGate, generate_gated
    from palette_lens.gate.gated_profile import GatedProfile
    from palette_lens.gate.router import Router
    from palette_lens.gate.features import GateFeatureCache
    from palette_lens.gate.training import fit_gate
    from palette_lens.generation.greedy import Generations, generate_completions
    from palette_lens.geometry.separation import layer_separation, separation_table, tsne_layers
    from palette_lens.models.chat_model import ChatModel
    from palette_lens.models.hooks import ablate, ablation_hooks, add, addition_hooks
    from palette_lens.models.loading import load_model, wrap_model
    from palette_lens.models.residuals import Residuals, collect_residuals
    from palette_lens.models.tiny import tiny_chat_model
    from palette_lens.pipeline.builtin import make_builtin_run, verify_builtin_run
    from palette_lens.pipeline.config import PipelineConfig
    from palette_lens.pipeline.run import run_pipeline
    from palette_lens.pipeline.run_folder import RunFolder
    from palette_lens.pipeline.runs import RunArtifacts, load_or_make_run, load_run, make_run
    from palette_lens.pipeline.search_and_bake import search_and_bake
    from palette_lens.refusal.judge import is_refusal, refusal_rate
    from palette_lens.refusal.tokens import (
        RefusalTokens,
        derive_refusal_tokens,
        first_token_kl,
        opener_tokens,
        refusal_scores,
    )
    from palette_lens.report.html import write_report
    from palette_lens.search.candidates import candidate_directions, collect_domain_residuals
    from palette_lens.search.direction import Direction, diff_in_means
    from palette_lens.search.direction_search import search_direction
    from palette_lens.search.result import SearchConfig, SearchResult
    from palette_lens.util.text import truncate
    from palette_lens.viz import widgets
