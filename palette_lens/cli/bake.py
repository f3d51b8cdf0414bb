"""``palette-lens bake``: bake a target domain's refusal direction into a single-block LoRA adapter.

Writes ``DIR/adapters/<domain>/`` (PEFT format + ``palette_meta.json``), ``DIR/adapters/<domain>/bake.json``
(training history, timings and the settings, with those read from ``--config``) and, unless ``--no-inspect``,
``inspect.html`` beside it. Without ``--from`` or ``--direction`` the direction search runs first (its output
goes to ``DIR/search.json`` and ``DIR/directions/``). The bake's research settings (scale, loss, margins, mix,
...) are read from ``--config FILE.toml`` (a ``[bake]`` table of BakeConfig fields).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from palette_lens.cli.checks import check_folder_input, check_output_folder
from palette_lens.cli.common import echo, load_data_from_args, load_model_from_args
from palette_lens.cli.config_file import config_from_args
from palette_lens.cli.options import (
    RemovedOption,
    add_config_argument,
    add_data_arguments,
    add_model_arguments,
    add_output_argument,
    alias,
)
from palette_lens.cli.value_types import (
    finite_float,
    fraction,
    mix_weights,
    non_negative_int,
    positive_float,
    positive_int,
)
from palette_lens.errors import PaletteError
from palette_lens.util.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

_NEGATIVE_KINDS = ("profession", "roleplay", "mixed")

#: BakeConfig's defaults of the options shown in --help (not imported: building the parser imports no torch;
#: tests/test_cli_help.py checks they agree)
DEFAULTS = {"steps": 120, "rank": 8, "alpha": 16.0}

#: the research settings that were flags: old flag -> (BakeConfig field, argparse type); hidden, deprecated
RESEARCH_FLAGS: dict[str, tuple[str, object]] = {}


def attack_kinds(text: str) -> tuple[str, ...]:
    """Parse ``--adversarial-negatives``: "none" or a comma-separated subset of profession, roleplay, mixed."""
    if text.strip().lower() in ("", "none"):
        return ()
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in _NEGATIVE_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(bad)}; choose from {', '.join(_NEGATIVE_KINDS)} or none")
    return kinds


RESEARCH_FLAGS.update({
    "--scale": ("scale", finite_float),
    "--target-mode": ("target_mode", None),
    "--loss": ("loss", None),
    "--other-scale": ("other_scale", finite_float),
    "--mix": ("mix", mix_weights),
    "--margin-retry": ("margin_retry", finite_float),
    "--margin-compose": ("margin_compose", finite_float),
    "--generation-check": ("generation_check", non_negative_int),
    "--adversarial-negatives": ("adversarial_negatives", attack_kinds),
    "--input-shift": ("input_shift", fraction),
    "--lr": ("lr", positive_float),
})
_CHOICES = {"target_mode": ("neutral", "reinforce"), "loss": ("cosine", "rel_mse")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--target", required=True, metavar="DOMAIN", help="the target (authorized) harmful domain")
    parser.add_argument("--from", dest="source", default=None, metavar="RUN",
                        help="a search or run output folder (search.json or directions/<target>.json) whose direction "
                             "is baked (default: the search runs first)")
    alias(parser, "--from-search", "--from", "source", metavar="DIR")
    parser.add_argument("--direction", default=None, metavar="FILE.json",
                        help="a saved Direction to bake, instead of --from (default: none)")
    add_output_argument(parser, "runs/bake-<target>")
    parser.add_argument("--steps", type=positive_int, default=None, metavar="N",
                        help=f"training steps (default: {DEFAULTS['steps']})")
    parser.add_argument("--rank", type=positive_int, default=None, metavar="R",
                        help=f"LoRA rank (default: {DEFAULTS['rank']})")
    parser.add_argument("--lora-alpha", type=positive_float, default=None, metavar="A",
                        help=f"LoRA alpha; ΔW = (alpha / rank)·B·A (default: {DEFAULTS['alpha']:g})")
    parser.add_argument("--alpha", action=RemovedOption,
                        fix="the LoRA alpha is now --lora-alpha (in the search command, --alpha is the search trade-off)")
    parser.add_argument("--refine", action="store_true",
                        help="one refinement round: search again on the adapted model at the adapter's layer, bake "
                        "again on top and save both rounds as one adapter")
    parser.add_argument("--no-inspect", action="store_true", help="skip inspect.html")
    add_config_argument(parser, ("bake",))
    for flag, (field, kind) in RESEARCH_FLAGS.items():
        extra = {"choices": _CHOICES[field]} if field in _CHOICES else {"type": kind}
        alias(parser, flag, f"[bake] {field} = ... in --config FILE.toml", f"bake_{field}", **extra)


def bake_settings(args: argparse.Namespace) -> dict:
    """BakeConfig overrides: ``[bake]`` of ``--config``, then the flags given (flags win); checked."""
    from palette_lens.bake.config import BakeConfig

    settings = dict(config_from_args(args).get("bake", {}))
    for field, value in (("steps", args.steps), ("rank", args.rank), ("alpha", args.lora_alpha)):
        if value is not None:
            settings[field] = value
    for field, _ in RESEARCH_FLAGS.values():
        if hasattr(args, f"bake_{field}"):
            settings[field] = getattr(args, f"bake_{field}")
    try:
        BakeConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise PaletteError(f"bake settings: {exc}") from None
    return settings


def _given_direction(args: argparse.Namespace):
    """The direction named by ``--direction`` or ``--from`` (read before the model loads), or None."""
    from palette_lens.pipeline.run_folder import RunFolder
    from palette_lens.search.direction import Direction

    if args.direction:
        path = Path(args.direction).expanduser()
        if not path.is_file():
            raise PaletteError(f"--direction {path}: no such file")
        direction = Direction.load(path)
    elif args.source:
        from palette_lens.search.result import SearchResult

        folder = check_folder_input(args.source)
        path = RunFolder(folder).direction_json(args.target)
        if (folder / "search.json").is_file():
            try:
                direction = SearchResult.load(folder, target=args.target).chosen
            except (ValueError, KeyError, TypeError) as exc:  # bad JSON or missing fields
                raise PaletteError(f"{folder / 'search.json'} is corrupt or incomplete ({exc})") from None
        elif path.is_file():
            direction = Direction.load(path)
        else:
            raise PaletteError(f"{folder} holds no search output for {args.target!r} (no search.json or {path})")
    else:
        return None  # searched by search_and_bake
    if direction.domain != args.target:
        raise PaletteError(f"the direction is for {direction.domain!r}, not for --target {args.target!r}")
    return direction


def run(args: argparse.Namespace) -> int:
    from palette_lens.bake.config import BakeConfig
    from palette_lens.pipeline.run_folder import RunFolder
    from palette_lens.pipeline.search_and_bake import bake_report, search_and_bake

    run_folder = RunFolder(check_output_folder(args.out or f"runs/bake-{args.target}"))
    prompts = load_data_from_args(args)
    prompts.check_domain(args.target)
    if args.target not in prompts.harmful_domains:
        raise PaletteError(f"the target must be a harmful domain, not {args.target!r}")
    settings = bake_settings(args)
    config = BakeConfig(**settings)
    given = _given_direction(args)
    model = load_model_from_args(args)
    if given is not None:
        given.check_model(model.fingerprint)
    else:
        echo(f"no --from given: searching a direction for {args.target!r} first")
    made = search_and_bake(model, prompts, [args.target], run_folder, bake=config,
                           directions={args.target: given} if given is not None else None)
    direction, result = made.directions[args.target], made.results[args.target]
    adapter = result.adapter
    folder = run_folder.adapter_dir(args.target)
    if args.refine:
        from palette_lens.bake.refine import refine

        refined = refine(model, adapter, prompts, config)
        adapter = refined.adapter
        run_folder.write_adapter(args.target, adapter, bake_report(result))
        r = refined.search.chosen
        echo(f"refined: searched again on the adapted model (layer {r.layer}, position {r.position}), "
             f"stacked into one rank-{adapter.rank} adapter")
    _echo_settings(run_folder.bake_json(args.target), args, config)
    written = [folder]
    if not args.no_inspect:
        from palette_lens.bake.inspect import inspect_adapter

        ins = inspect_adapter(model, adapter, prompts)
        page = "<!doctype html><meta charset='utf-8'><title>palette-lens adapter</title>" + ins.to_html()
        atomic_write_text(folder / "inspect.html", page)
        written.append(folder / "inspect.html")
    v = result.val
    echo(f"baked {args.target!r} (direction at layer {direction.layer}, position {direction.position}) "
         f"into block {result.adapter.layer_index} in {result.timings_s['total']:.0f} s")
    echo(f"  validation, first token: target refusal mass {v['p_target']:.2f} (vanilla {v['p_target_base']:.2f}), "
         f"other harmful kept {v['retain_mean']:.0%} (worst {v['retain_min']:.0%}), harmless KL {v['kl_harmless']:.3f}")
    echo("written: " + ", ".join(str(p) for p in written))
    return 0


def _echo_settings(path: Path, args: argparse.Namespace, config) -> None:
    """Add the bake's settings, and those read from ``--config``, to ``bake.json``."""
    doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    doc["settings"] = config.to_dict()
    if args.config:
        doc["config_file"] = {"path": str(Path(args.config).expanduser()), **config_from_args(args)}
    atomic_write_json(path, doc)
