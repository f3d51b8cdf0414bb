"""``palette-lens run``: the whole pipeline for chosen target domains, on built-in and/or user data.

Baseline → search → bake → profiles (each single domain, a pair, the triple) → evaluation with the
baselines → ``metrics.json``, ``details.json``, ``report.html``, ``adapters/``, ``directions/`` in ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from palette_lens.cli.common import (
    add_data_arguments,
    add_model_arguments,
    compose_weight,
    echo,
    load_data_from_args,
    load_model_from_args,
    positive_int,
)
from palette_lens.pipeline.run_folder import RunFolder

log = logging.getLogger(__name__)


def add_pipeline_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by ``run`` and ``demo`` (and ``evaluate``)."""
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--quick", action="store_true", help="few prompts per stage (CI-sized, minutes)")
    parser.add_argument("--profile", action="append", default=None, metavar="D1+D2",
                        help="a profile to evaluate (repeatable; default: each target, one pair, the triple)")
    parser.add_argument("--pairs", choices=["first", "all"], default=None, help="which pairs of targets to evaluate")
    parser.add_argument("--compose-weight", type=compose_weight, default=None, metavar="W",
                        help="ΔW weight of each adapter in a profile of two or more domains, in (0, 2] "
                             "(default 0.85, which leaks less into the other domains than 1, the plain sum; docs/results.md)")
    parser.add_argument("--eval-limit", type=positive_int, default=None, help="test prompts per harmful domain")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, help="greedy tokens per completion (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="sequences per generation batch (default 64)")
    parser.add_argument("--gate-profiles", choices=["none", "reference", "singles", "all"], default=None,
                        help="profiles also evaluated behind a domain gate (palette_lens.gate.domain_gate), reported as the "
                             "domain_gate baseline (default: reference, the first single-domain profile)")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument("--no-cache", action="store_true",
                        help="generate the vanilla baseline again even when cached from an identical run")


def pipeline_config(args: argparse.Namespace, targets: list[str] | None = None):
    from palette_lens.pipeline.config import PipelineConfig

    overrides = {}
    if targets:
        overrides["targets"] = tuple(targets)
    for key in ("pairs", "compose_weight", "eval_limit", "max_new_tokens", "batch_size", "gate_profiles"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if getattr(args, "no_cache", False):
        overrides["cache_generations"] = False
    return PipelineConfig.quick_preset(**overrides) if args.quick else PipelineConfig.full(**overrides)


def parse_profiles(args: argparse.Namespace):
    from palette_lens.compose.profiles import Profile

    return [Profile.parse(p) for p in args.profile] if args.profile else None


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


def execute(args: argparse.Namespace, targets: list[str] | None) -> int:
    """Load data and model, run the pipeline, print a summary."""
    from palette_lens.errors import PaletteError
    from palette_lens.pipeline.run import run_pipeline

    prompts = load_data_from_args(args)
    for t in targets or []:
        prompts.check_domain(t)
        if t not in prompts.harmful_domains:
            raise PaletteError(f"the target must be a harmful domain, not {t!r}")
    config = pipeline_config(args, targets)
    t0 = time.perf_counter()
    model = load_model_from_args(args)
    timings = {"load_model": round(time.perf_counter() - t0, 2)}
    result = run_pipeline(model, prompts, Path(args.out), config, profiles=parse_profiles(args), timings=timings,
                          report=not args.no_report)
    summarize(result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--target", action="append", required=True, metavar="DOMAIN",
                        help="a target (authorized) domain; repeat for several")
    add_pipeline_arguments(parser, "runs/run")


def run(args: argparse.Namespace) -> int:
    return execute(args, list(dict.fromkeys(args.target)))
