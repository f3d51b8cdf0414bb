"""``palette-lens run``: the whole pipeline for chosen target domains, on built-in and/or user data.

Baseline → search → bake → profiles (each single domain, a pair, the triple) → evaluation with the
baselines → ``metrics.json``, ``details.json``, ``report.html``, ``adapters/``, ``directions/`` in ``--out``.
Everything (data, targets, profiles, ``--config``, gate settings, the output folder) is checked before the
model loads.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from palette_lens.cli.checks import check_output_folder, check_profiles_have, parse_profile
from palette_lens.cli.common import echo, gate_settings_from_args, load_data_from_args, load_model_from_args
from palette_lens.cli.config_file import config_from_args
from palette_lens.cli.options import (
    add_compose_weight_argument,
    add_config_argument,
    add_data_arguments,
    add_gate_settings,
    add_limit_argument,
    add_model_arguments,
    add_no_cache_argument,
    add_output_argument,
)
from palette_lens.cli.value_types import positive_int
from palette_lens.errors import PaletteError
from palette_lens.pipeline.run_folder import RunFolder

log = logging.getLogger(__name__)

#: demo's targets when none are given (palette_lens.pipeline.config.DEFAULT_TARGETS, without importing torch)
DEFAULT_TARGETS = ("cyber", "disinformation", "hate")


def add_pipeline_arguments(parser: argparse.ArgumentParser, default_out: str | None, out_text: str | None = None,
                           bake_config: bool = True) -> None:
    """Options shared by ``run`` and ``demo`` (and ``evaluate``)."""
    add_output_argument(parser, out_text or default_out or "", default_out)
    parser.add_argument("--quick", action="store_true", help="few prompts per stage (CI-sized, minutes)")
    parser.add_argument("--profile", action="append", default=None, metavar="D1+D2",
                        help="a profile to evaluate, domains joined by '+' (repeatable; default: each target, one "
                             "pair, the triple)")
    parser.add_argument("--pairs", choices=["first", "all"], default=None,
                        help="which pairs of targets to evaluate (default: first)")
    add_compose_weight_argument(parser)
    add_limit_argument(parser, "test prompts per harmful domain (default: 40; 12 with --quick)", old="--eval-limit")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                        help="greedy tokens per completion (default: 64)")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                        help="sequences per generation batch (default: 64)")
    parser.add_argument("--gate-profiles", choices=["none", "reference", "singles", "all"], default=None,
                        help="profiles also evaluated as one gated model (the adapters unmerged, the profile's domain "
                             "gate deciding per prompt), reported as each profile's 'gated' entry (default: all)")
    parser.add_argument("--gate-routing", choices=["routed", "merged"], default=None,
                        help="in a gated profile of several domains, give each prompt the gate opens for the delta "
                             "of the domain the gate reads it as (routed, the default) or every delta (merged)")
    add_gate_settings(parser)
    add_config_argument(parser, ("bake", "gate") if bake_config else ("gate",))
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    add_no_cache_argument(parser)


def pipeline_config(args: argparse.Namespace, targets: list[str] | None = None):
    from palette_lens.pipeline.config import PipelineConfig

    overrides: dict = {}
    if targets:
        overrides["targets"] = tuple(targets)
    for key, field in (("pairs", "pairs"), ("compose_weight", "compose_weight"), ("limit", "eval_limit"),
                       ("max_new_tokens", "max_new_tokens"), ("batch_size", "batch_size"),
                       ("gate_profiles", "gate_profiles"), ("gate_routing", "gate_routing")):
        if getattr(args, key, None) is not None:
            overrides[field] = getattr(args, key)
    if getattr(args, "no_cache", False):
        overrides["cache_generations"] = False
    gate = gate_settings_from_args(args)
    if gate:
        overrides["gate"] = gate
    bake = config_from_args(args).get("bake")
    if bake:
        overrides["bake"] = dict(bake)
    return PipelineConfig.quick_preset(**overrides) if args.quick else PipelineConfig.full(**overrides)


def parse_profiles(args: argparse.Namespace):
    return [parse_profile(p) for p in args.profile] if args.profile else None


def summarize(result) -> None:
    """Print the headline numbers of a pipeline run."""
    m, d = result.metrics, result.details
    base = m["baseline"]["refusal_rate"]
    echo(f"model {m['model']}; test prompts per domain: {d['evaluated_n']}")
    echo("baseline refusal: " + ", ".join(f"{k} {v:.0%}" for k, v in base.items()))
    for name, p in m["profiles"].items():
        rates = p["refusal_rate"]
        floors = d["floors"].get(name, {})
        echo(f"profile {name:<24} " + " ".join(f"{k}:{v:.0%}" for k, v in rates.items())
             + f"  KL {p['harmless_kl']:.3f}  F1 {p['f1']:.2f}  floors {'pass' if floors.get('ok') else 'FAIL'}")
    for kind, b in m["baselines"].items():
        if b:
            echo(f"{kind} [{d['reference_profile']}]: " + " ".join(f"{k}:{v:.0%}" for k, v in b["refusal_rate"].items()))
    lat = m["latency_ms_per_token"]
    echo(f"latency ms/token: vanilla {lat['vanilla']:.0f}, merged {lat['merged']:.0f} "
         f"(x{lat['merged'] / lat['vanilla']:.3f}), hooked {lat['hooked']:.0f} (x{lat['hooked'] / lat['vanilla']:.3f})")
    echo("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in m["timings_s"].items()))
    out = Path(result.out)
    run = RunFolder(out)
    echo(f"written: {run.metrics_json}, {run.report_html}, {run.adapters_dir}/, {run.directions_dir}/")


def check(args: argparse.Namespace, targets: list[str] | None):
    """Everything ``run``/``demo`` can check without the model: (prompts, config, profiles)."""
    out = check_output_folder(args.out)
    prompts = load_data_from_args(args)
    for t in targets or []:
        prompts.check_domain(t)
        if t not in prompts.harmful_domains:
            raise PaletteError(f"the target must be a harmful domain, not {t!r}")
    profiles = parse_profiles(args)
    if profiles:
        chosen = targets or [t for t in DEFAULT_TARGETS if t in prompts.harmful_domains]
        if targets or len(chosen) == len(DEFAULT_TARGETS):  # otherwise the pipeline picks the targets
            check_profiles_have(profiles, chosen, "is not a target (targets: {available}); add --target {first}")
    config = pipeline_config(args, targets)
    return out, prompts, config, profiles


def execute(args: argparse.Namespace, targets: list[str] | None) -> int:
    """Check everything, then load the model, run the pipeline, print a summary."""
    from palette_lens.pipeline.run import run_pipeline

    out, prompts, config, profiles = check(args, targets)
    t0 = time.perf_counter()
    model = load_model_from_args(args)
    timings = {"load_model": round(time.perf_counter() - t0, 2)}
    result = run_pipeline(model, prompts, out, config, profiles=profiles, timings=timings,
                          report=not args.no_report)
    summarize(result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, gate_data=True)
    parser.add_argument("--target", action="append", required=True, metavar="DOMAIN",
                        help="a target (authorized) domain; repeat for several")
    add_pipeline_arguments(parser, "runs/run")


def run(args: argparse.Namespace) -> int:
    return execute(args, list(dict.fromkeys(args.target)))
