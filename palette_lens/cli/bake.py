"""``palette-lens bake``: bake a target domain's refusal direction into a single-block LoRA adapter.

Writes ``DIR/adapters/<domain>/`` (PEFT format + ``palette_meta.json``), ``DIR/adapters/<domain>/bake.json``
(training history and timings) and, unless ``--no-inspect``, ``inspect.html`` beside it. Without
``--from-search`` the direction search runs first (its output goes to ``DIR/search.json`` and
``DIR/directions/``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from palette_lens.cli.common import (
    add_data_arguments,
    add_model_arguments,
    echo,
    finite_float,
    fraction,
    load_data_from_args,
    load_model_from_args,
    mix_weights,
    non_negative_int,
    positive_float,
    positive_int,
)
from palette_lens.errors import PaletteError
from palette_lens.util.atomic import atomic_write_text

log = logging.getLogger(__name__)

_NEGATIVE_KINDS = ("profession", "roleplay", "mixed")


def attack_kinds(text: str) -> tuple[str, ...]:
    """Parse ``--adversarial-negatives``: "none" or a comma-separated subset of profession, roleplay, mixed."""
    if text.strip().lower() in ("", "none"):
        return ()
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in _NEGATIVE_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(bad)}; choose from {', '.join(_NEGATIVE_KINDS)} or none")
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from palette_lens.bake.config import BakeConfig

    d = BakeConfig()
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--target", required=True, help="the target (authorized) harmful domain")
    parser.add_argument("--from-search", default=None, metavar="DIR",
                        help="a search output folder (search.json + directions/); the search runs when omitted")
    parser.add_argument("--direction", default=None, metavar="FILE.json",
                        help="a saved Direction to bake (instead of a search)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/bake-<target>)")
    parser.add_argument("--scale", type=finite_float, default=d.scale, help=f"s in h − s·(h·r̂)r̂ (default {d.scale})")
    parser.add_argument("--target-mode", choices=["neutral", "reinforce"], default=d.target_mode,
                        help=f"target of non-target prompts (default {d.target_mode})")
    parser.add_argument("--loss", choices=["cosine", "rel_mse"], default=d.loss, help=f"default {d.loss}")
    parser.add_argument("--other-scale", type=finite_float, default=d.other_scale,
                        help=f"margin on non-target harmful prompts: h + m·(h·r̂)r̂ (default {d.other_scale})")
    parser.add_argument("--mix", type=mix_weights, default=d.mix, metavar="T:O:H:B",
                        help="sampling weights of target : other harmful : harmless : borderline prompts (default "
                        f"{':'.join(f'{w:g}' for w in d.mix)}); the margin fallback's bake uses borderline >= "
                        f"{d.margin_retry_borderline:g}")
    parser.add_argument("--margin-retry", type=finite_float, default=d.margin_retry,
                        help="margin of the second bake for a target whose weakest other domain keeps less than "
                        f"{d.margin_retry_below} of its refusal (validation); 0: bake once, no margin at all "
                        f"(default {d.margin_retry})")
    parser.add_argument("--margin-compose", type=finite_float, default=d.margin_compose,
                        help="margin of the second bake for every other target (kept only if it keeps more of the "
                        f"other domains without costing the target); 0: bake those once (default {d.margin_compose})")
    parser.add_argument("--generation-check", type=non_negative_int, default=d.generation_check, metavar="K",
                        help="generate the validation prompts with the K most selective checkpoints and keep the best "
                        f"by generated refusal (default {d.generation_check}: first-token scores only)")
    parser.add_argument("--refine", action="store_true",
                        help="one refinement round: search again on the adapted model at the adapter's layer, bake "
                        "again on top and save both rounds as one adapter")
    parser.add_argument("--adversarial-negatives", type=attack_kinds, default=d.adversarial_negatives,
                        metavar="KINDS", help="comma-separated kinds from profession,roleplay,mixed whose variants of "
                        f"non-target train prompts join the negatives, or 'none' (default {','.join(d.adversarial_negatives) or 'none'})")
    parser.add_argument("--input-shift", type=fraction, default=d.input_shift,
                        help="share of harmful training rows whose block input is shifted along r̂, as other adapters "
                        f"upstream in a composed profile would shift it (default {d.input_shift})")
    parser.add_argument("--steps", type=positive_int, default=d.steps, help=f"training steps (default {d.steps})")
    parser.add_argument("--lr", type=positive_float, default=d.lr, help=f"learning rate (default {d.lr})")
    parser.add_argument("--rank", type=positive_int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    parser.add_argument("--alpha", type=positive_float, default=d.alpha, help=f"LoRA alpha (default {d.alpha})")
    parser.add_argument("--no-inspect", action="store_true", help="skip inspect.html")


def _given_direction(args: argparse.Namespace, model):
    """The direction named by ``--direction`` or ``--from-search`` (checked against the model), or None."""
    from palette_lens.pipeline.run_folder import RunFolder
    from palette_lens.search.direction import Direction

    if args.direction:
        direction = Direction.load(args.direction)
    elif args.from_search:
        from palette_lens.search.result import SearchResult

        folder = Path(args.from_search)
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
    direction.check_model(model.fingerprint)
    return direction


def run(args: argparse.Namespace) -> int:
    from palette_lens.bake.config import BakeConfig
    from palette_lens.pipeline.run_folder import RunFolder
    from palette_lens.pipeline.search_and_bake import bake_report, search_and_bake

    prompts = load_data_from_args(args)
    prompts.check_domain(args.target)
    if args.target not in prompts.harmful_domains:
        raise PaletteError(f"the target must be a harmful domain, not {args.target!r}")
    run_folder = RunFolder(args.out or f"runs/bake-{args.target}")
    model = load_model_from_args(args)
    given = _given_direction(args, model)
    if given is None:
        echo(f"no --from-search given: searching a direction for {args.target!r} first")
    config = BakeConfig(
        scale=args.scale, target_mode=args.target_mode, loss=args.loss, steps=args.steps, lr=args.lr,
        rank=args.rank, alpha=args.alpha, other_scale=args.other_scale, mix=args.mix, margin_retry=args.margin_retry,
        margin_compose=args.margin_compose, generation_check=args.generation_check,
        adversarial_negatives=args.adversarial_negatives, input_shift=args.input_shift,
    )
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
