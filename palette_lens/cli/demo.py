"""``palette-lens demo``: the whole pipeline on the built-in data (cyber, disinformation, hate by default).

Writes ``report.html``, ``metrics.json``, ``details.json``, ``adapters/<domain>/`` and ``directions/`` into
``--out``. ``--quick`` uses few prompts per stage (CI-sized).
"""

from __future__ import annotations

import argparse

from palette_lens.cli.options import add_model_arguments
from palette_lens.cli.run import add_pipeline_arguments, execute


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--target", action="append", default=None, metavar="DOMAIN",
                        help="a target domain, repeatable (default: cyber, disinformation, hate)")
    add_pipeline_arguments(parser, "runs/demo")


def run(args: argparse.Namespace) -> int:
    args.data, args.replace_data, args.gate_data, args.seed = [], False, [], 0
    return execute(args, list(dict.fromkeys(args.target)) if args.target else None)
