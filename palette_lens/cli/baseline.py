"""``palette-lens baseline``: refusal rate of the unmodified model per domain."""

from __future__ import annotations

import argparse
import logging

from palette_lens.cli.common import (
    add_data_arguments,
    add_model_arguments,
    echo,
    load_data_from_args,
    load_model_from_args,
    positive_int,
)
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.util.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--limit", type=positive_int, default=None, help="at most N prompts per domain")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--domains", nargs="*", default=None, help="domains to measure (default: all)")
    parser.add_argument("--out", default="runs/baseline", help="output folder")


def run(args: argparse.Namespace) -> int:
    from palette_lens.evaluate.vanilla import baseline_refusal

    prompts = load_data_from_args(args)
    if args.domains:
        for d in args.domains:
            prompts.check_domain(d)
    model = load_model_from_args(args)
    table = baseline_refusal(
        model, prompts, domains=args.domains, split=args.split, limit=args.limit, max_new_tokens=args.max_new_tokens
    )
    run = RunFolder(args.out)
    atomic_write_json(run.baseline_json, table.to_dict())
    atomic_write_text(run.baseline_md, table.markdown() + "\n")
    echo(table.markdown())
    echo(f"\nwritten: {run.baseline_json}, {run.baseline_md}")
    return 0
