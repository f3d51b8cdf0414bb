"""``palette-lens baseline``: refusal rate of the unmodified model per domain."""

from __future__ import annotations

import argparse
import logging

from palette_lens.cli.checks import check_output_folder
from palette_lens.cli.common import echo, load_data_from_args, load_model_from_args
from palette_lens.cli.options import (
    add_data_arguments,
    add_limit_argument,
    add_model_arguments,
    add_output_argument,
)
from palette_lens.cli.value_types import positive_int
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.util.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to measure")
    add_limit_argument(parser, "at most N prompts per domain (default: all)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N",
                        help="greedy tokens per completion")
    parser.add_argument("--domains", nargs="*", default=None, metavar="DOMAIN",
                        help="domains to measure (default: all)")
    add_output_argument(parser, "runs/baseline", "runs/baseline")


def run(args: argparse.Namespace) -> int:
    from palette_lens.evaluate.vanilla import baseline_refusal

    run = RunFolder(check_output_folder(args.out))
    prompts = load_data_from_args(args)
    if args.domains:
        for d in args.domains:
            prompts.check_domain(d)
    model = load_model_from_args(args)
    table = baseline_refusal(
        model, prompts, domains=args.domains, split=args.split, limit=args.limit, max_new_tokens=args.max_new_tokens
    )
    atomic_write_json(run.baseline_json, table.to_dict())
    atomic_write_text(run.baseline_md, table.markdown() + "\n")
    echo(table.markdown())
    echo(f"\nwritten: {run.baseline_json}, {run.baseline_md}")
    return 0
