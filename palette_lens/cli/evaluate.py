"""``palette-lens evaluate``: evaluate baked adapters, their profiles and the baselines on the test split.

Takes a folder with ``adapters/<domain>/`` (from ``bake``, ``run`` or ``demo``), and writes
``metrics.json``, ``details.json`` and ``report.html`` (search and bake are not rerun).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from palette_lens.cli.common import (
    add_data_arguments,
    add_model_arguments,
    load_data_from_args,
    load_model_from_args,
)
from palette_lens.cli.run import add_pipeline_arguments, parse_profiles, pipeline_config, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--from", dest="source", required=True, metavar="DIR",
                        help="a folder holding adapters/<domain>/")
    parser.add_argument("--adapter", action="append", default=[], metavar="FOLDER", help="extra adapter folders")
    add_pipeline_arguments(parser, "")


def run(args: argparse.Namespace) -> int:
    from palette_lens.cli.compose import load_adapters
    from palette_lens.pipeline.run import run_pipeline

    prompts = load_data_from_args(args)
    t0 = time.perf_counter()
    model = load_model_from_args(args)
    timings = {"load_model": round(time.perf_counter() - t0, 2)}
    adapters = load_adapters(args.source, args.adapter, model)
    for d in adapters:
        prompts.check_domain(d)
    config = pipeline_config(args, list(adapters))
    out = Path(args.out or args.source)
    result = run_pipeline(model, prompts, out, config, adapters=adapters, profiles=parse_profiles(args),
                          timings=timings, report=not args.no_report)
    summarize(result)
    return 0
