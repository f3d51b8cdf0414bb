"""``palette-lens evaluate``: evaluate baked adapters, their profiles and the baselines on the test split.

Takes a folder with ``adapters/<domain>/`` (from ``bake``, ``run`` or ``demo``), and writes
``metrics.json``, ``details.json`` and ``report.html`` (search and bake are not rerun).
"""

from __future__ import annotations

import argparse
import time

from palette_lens.cli.checks import check_adapter_inputs, check_output_folder, check_profiles_have
from palette_lens.cli.common import load_data_from_args, load_model_from_args
from palette_lens.cli.options import add_data_arguments, add_model_arguments
from palette_lens.cli.run import add_pipeline_arguments, parse_profiles, pipeline_config, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, gate_data=True)
    parser.add_argument("--from", dest="source", required=True, metavar="RUN",
                        help="a folder holding adapters/<domain>/ (a run, demo or bake output)")
    parser.add_argument("--adapter", action="append", default=[], metavar="FOLDER",
                        help="an extra adapter folder (repeatable; default: none)")
    add_pipeline_arguments(parser, None, out_text="the --from folder, whose metrics.json, details.json and "
                                                  "report.html are replaced", bake_config=False)


def run(args: argparse.Namespace) -> int:
    from palette_lens.cli.compose import load_adapters
    from palette_lens.pipeline.run import run_pipeline

    domains = check_adapter_inputs(args.source, args.adapter)
    out = check_output_folder(args.out or args.source)
    prompts = load_data_from_args(args)
    for d in domains:
        prompts.check_domain(d)
    profiles = parse_profiles(args)
    if profiles:
        check_profiles_have(profiles, domains, "has no adapter here (adapters: {available})")
    config = pipeline_config(args, domains)
    t0 = time.perf_counter()
    model = load_model_from_args(args)
    timings = {"load_model": round(time.perf_counter() - t0, 2)}
    adapters = load_adapters(args.source, args.adapter, model)
    config = pipeline_config(args, list(adapters))
    result = run_pipeline(model, prompts, out, config, adapters=adapters, profiles=profiles,
                          timings=timings, report=not args.no_report)
    summarize(result)
    return 0
