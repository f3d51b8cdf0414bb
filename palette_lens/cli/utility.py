"""``palette-lens utility``: HumanEval pass@1 of vanilla and of a run's profiles, merged and gated.

Reads the adapters of a run folder (``RUN/adapters/<domain>/``) and its gates (``RUN/gates/<profile>/``), asks the
model the 164 HumanEval problems (greedy; ``--limit N``: the first N), runs each reply's code with the problem's
unit tests in a restricted subprocess (``--timeout`` seconds each; no network, no file-system writes outside a
temporary folder), and writes ``utility.json``: ``{variant: {"pass_at_1", "n", "ci", "passed", "failed"}}`` with a
Wilson 95% interval; gated variants (``"<profile> gated"``) also hold ``"opened"``, how many problems the gate let
the profile answer. An existing ``utility.json`` with the same number of problems keeps the variants not
measured again; the others are replaced. When the folder holds ``metrics.json`` and ``details.json``, its
``report.html`` is rebuilt with a utility table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from palette_lens.cli.checks import (
    check_folder_input,
    check_output_file,
    check_output_folder,
    check_profiles_have,
    parse_profile,
)
from palette_lens.cli.common import compose_weight_for, echo, load_model_from_args, run_settings
from palette_lens.cli.options import add_compose_weight_argument, add_model_arguments, add_no_cache_argument
from palette_lens.cli.value_types import integer, number, positive_int
from palette_lens.errors import PaletteError

log = logging.getLogger(__name__)

#: palette_lens.evaluate.humaneval.HUMAN_EVAL_SIZE and UtilityConfig's defaults (not imported: building the parser
#: imports no torch; tests/test_utility.py checks they agree)
HUMAN_EVAL_SIZE = 164
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_BATCH_SIZE = 16
#: the file written into --out
UTILITY_FILE = "utility.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--from", dest="source", required=True, metavar="RUN",
                        help="a run folder holding adapters/<domain>/ (demo, run or evaluate output), or 'builtin' "
                             "for the run shipped with the embedded model (read-only: give --out)")
    parser.add_argument("--profile", action="append", default=None, metavar="DOMAIN[+DOMAIN]",
                        help="a profile to measure: one domain, or several joined by '+' whose adapters are merged "
                             "(repeatable; default: each domain of RUN, the first pair and the first three)")
    parser.add_argument("--limit", type=integer, default=None, metavar="N",
                        help=f"only the first N HumanEval problems, 1 to {HUMAN_EVAL_SIZE} (default: all "
                             f"{HUMAN_EVAL_SIZE})")
    parser.add_argument("--timeout", type=number, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="wall-clock seconds each program may run with its tests")
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
                        help="greedy tokens per reply")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help="sequences per generation batch")
    add_compose_weight_argument(parser, from_run=True)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"the folder {UTILITY_FILE} goes into (default: the --from folder); a {UTILITY_FILE} "
                             "there from an earlier run on as many problems keeps the variants not measured again")
    add_no_cache_argument(parser)


def _utility_file_ok(path: Path) -> bool:
    """Whether ``path`` reads as a ``utility.json`` this command wrote (a JSON object of variant entries)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(
        isinstance(v, dict) and isinstance(v.get("pass_at_1"), (int, float)) and isinstance(v.get("n"), int)
        for v in doc.values()
    )


def check_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Every check that needs no model: the run folder, the profiles, the limits and the output file.

    Returns:
        ``folder`` (the run, None for the shipped one), ``have`` (its adapter domains), ``profiles``, ``out``
        (the ``utility.json`` path) and ``compose_weight``.
    """
    from palette_lens.compose.profiles import default_profiles
    from palette_lens.pipeline.builtin import builtin_run_dir, is_builtin
    from palette_lens.pipeline.run_folder import RunFolder

    builtin = is_builtin(args.source)
    if builtin and args.out is None:
        raise PaletteError("--from builtin is the run shipped inside the package, which is read-only; give --out DIR "
                           f"for {UTILITY_FILE}")
    folder = builtin_run_dir() if builtin else check_folder_input(args.source)
    have = RunFolder(folder).adapter_domains()
    if not have:
        raise PaletteError(f"--from {folder} is not a run folder: it holds no adapters (expected "
                           f"{folder}/adapters/<domain>/)")
    profiles = [parse_profile(p) for p in args.profile] if args.profile else default_profiles(have)
    names = [p.name for p in profiles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PaletteError(f"profile {repeated[0]!r} is given twice")
    check_profiles_have(profiles, have, "has no adapter in " + str(folder) + " (adapters: {available})")
    if args.limit is not None and not 1 <= args.limit <= HUMAN_EVAL_SIZE:
        raise PaletteError(f"--limit must be between 1 and {HUMAN_EVAL_SIZE} (HumanEval's problems), not {args.limit}")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise PaletteError(f"--timeout must be a number of seconds above 0, not {args.timeout:g}")
    out_dir = check_output_folder(args.out if args.out is not None else folder, any_folder=True)
    if not builtin and is_builtin(out_dir):
        raise PaletteError("--out: the run shipped inside the package is read-only; give another folder")
    out = check_output_file(out_dir / UTILITY_FILE)
    if out.exists() and not _utility_file_ok(out):
        raise PaletteError(f"--out: {out} exists and is not a {UTILITY_FILE} written by palette-lens utility; move it "
                           "or give another folder")
    weight = compose_weight_for(args.compose_weight, run_settings(folder)[0])
    return {"folder": None if builtin else folder, "have": have, "profiles": profiles, "out": out,
            "compose_weight": weight}


def merge_with_earlier(path: Path, table: dict[str, dict]) -> dict[str, dict]:
    """``table`` plus the variants of an earlier ``utility.json`` at ``path`` measured on as many problems
    (the new entries win; an earlier file on another number of problems is replaced whole)."""
    if not path.is_file():
        return table
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return table
    n = {v["n"] for v in table.values()}
    if not isinstance(earlier, dict) or {v.get("n") for v in earlier.values() if isinstance(v, dict)} - n:
        log.warning("%s was measured on another number of problems; replacing it", path)
        return table
    merged = {k: table.get(k, v) for k, v in earlier.items()}  # the earlier order, new entries replacing old
    return {**merged, **table}


def run(args: argparse.Namespace) -> int:
    from palette_lens.evaluate.utility import UtilityConfig, measure_utility, utility_table
    from palette_lens.pipeline.runs import load_run
    from palette_lens.util.atomic import atomic_write_json

    checked = check_inputs(args)  # everything that can be checked without the model first
    profiles, out = checked["profiles"], checked["out"]
    config = UtilityConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, timeout_s=args.timeout,
                           cache=not args.no_cache)

    model = load_model_from_args(args)
    domains = list(dict.fromkeys(d for p in profiles for d in p.domains))
    artifacts = load_run(checked["folder"] or "builtin", model, domains)
    gates = {}
    for p in profiles:
        gate = artifacts.gate(p.name, model)
        if gate is not None:
            gates[p.name] = gate
    results = measure_utility(model, artifacts.adapters, profiles, gates, limit=args.limit, config=config,
                              compose_weight=checked["compose_weight"])
    table = merge_with_earlier(out, utility_table(results))
    atomic_write_json(out, table)

    echo(f"HumanEval pass@1 (greedy, {next(iter(results.values())).n} problems, 95% Wilson interval):")
    for name, r in results.items():
        low, high = r.ci
        gate = f", gate opened {r.opened}" if r.opened is not None else ""
        echo(f"  {name:<34} {100 * r.pass_at_1:5.1f}%  [{100 * low:.1f}, {100 * high:.1f}]  "
             f"({r.passed}/{r.n}{gate})")
    echo(f"written: {out}")
    folder = out.parent
    if (folder / "metrics.json").is_file() and (folder / "details.json").is_file():
        from palette_lens.report.html import report_from_folder

        try:
            echo(f"report rebuilt: {report_from_folder(folder)}")
        except (KeyError, ValueError, TypeError) as exc:  # an older metrics.json the report cannot read
            log.warning("report.html not rebuilt: %s", exc)
    return 0
