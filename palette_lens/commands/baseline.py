"""``palette-lens baseline``: refusal rate of the unmodified model per domain."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..atomic import atomic_write_text
from .common import (
    add_data_arguments,
    add_model_arguments,
    echo,
    load_data_from_args,
    load_model_from_args,
    positive_int,
)

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
    from ..baseline import baseline_refusal

    prompts = load_data_from_args(args)
    if args.domains:
        for d in args.domains:
            prompts.check_domain(d)
    model = load_model_from_args(args)
    table = baseline_refusal(
        model, prompts, domains=args.domains, split=args.split, limit=args.limit, max_new_tokens=args.max_new_tokens
    )
    out = Path(args.out)
    atomic_write_text(out / "baseline.json", json.dumps(table.to_dict(), indent=1))
    atomic_write_text(out / "baseline.md", table.markdown() + "\n")
    echo(table.markdown())
    echo(f"\nwritten: {out / 'baseline.json'}, {out / 'baseline.md'}")
    return 0
