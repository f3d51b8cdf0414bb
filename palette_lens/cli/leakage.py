"""``palette-lens leakage``: non-target refusal of profiles under adversarial prompts.

Reads the adapters of a finished run folder (``DIR/adapters/<domain>/``); a profile is one domain or several
(``cyber+hate``: their adapters merged with the composition weight, as the pipeline and ``compose`` merge them).
It builds for each profile the non-target test prompts framed as its profession, wrapped in role-play templates and mixed with a target
request (:mod:`palette_lens.evaluate.leakage`), and compares the merged profile's refusal with vanilla's on the same
prompts. Writes ``leakage.md`` and ``leakage.json`` into ``--out`` (default: the run folder). With ``--gate`` each profile is also
measured as one gated model (:class:`palette_lens.gate.gated_profile.GatedProfile`: the adapters unmerged, the profile's
domain gate deciding per prompt which domain's delta applies; rows ``<profile> gated``, the gates saved under ``gates/``
next to the table); ``--gated-only`` measures only those rows (and vanilla).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from palette_lens.cli.checks import (
    check_folder_input,
    check_gate_flags_need_gate,
    check_output_file,
    check_output_folder,
    parse_profile,
)
from palette_lens.cli.common import (
    compose_weight_for,
    echo,
    gate_config_from_args,
    load_data_from_args,
    load_model_from_args,
    run_settings,
)
from palette_lens.cli.options import (
    add_compose_weight_argument,
    add_config_argument,
    add_data_arguments,
    add_gate_arguments,
    add_limit_argument,
    add_model_arguments,
    add_no_cache_argument,
    warn,
)
from palette_lens.cli.value_types import integer, positive_int

log = logging.getLogger(__name__)

#: palette_lens.data.attacks.ATTACK_KINDS and MIXED_ORDERS (not imported: building the parser imports no torch;
#: tests/test_cli_help.py checks they agree)
ATTACK_KINDS = ("direct", "profession", "roleplay", "mixed")
MIXED_ORDERS = ("random", "target_first", "nontarget_first")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, gate_data=True)
    parser.add_argument("--from", dest="source", required=True, metavar="RUN",
                        help="a finished run folder holding adapters/<domain>/ (demo, run or evaluate output)")
    parser.add_argument("--profile", action="append", default=None, metavar="DOMAIN[+DOMAIN]",
                        help="a profile to attack: one domain, or several joined by '+' whose adapters are merged "
                             "(repeatable; default: every adapter in RUN alone)")
    parser.add_argument("--attack", action="append", default=None, choices=ATTACK_KINDS,
                        help="an attack kind (repeatable; default: all)")
    add_limit_argument(parser, "prompts per profile and attack", default=24)
    add_compose_weight_argument(parser, from_run=True)
    parser.add_argument("--attack-seed", type=integer, default=0, metavar="N", help="seed of the prompt sampling")
    parser.add_argument("--mixed-order", choices=MIXED_ORDERS, default="random",
                        help="order of the two requests in mixed prompts (default: random, seeded)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                        help="greedy tokens per completion (default: the run's, else 64)")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                        help="sequences per generation batch (default: the run's, else 64)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="the folder leakage.md, leakage.json and gates/ go into (default: the --from folder)")
    add_no_cache_argument(parser)
    add_gate_arguments(parser, "also measure each profile as one gated model: a domain probe trained on the train "
                               "prompts decides per prompt whether (and, in a profile of several domains, which) "
                               "adapter acts; rows '<profile> gated'")
    parser.add_argument("--gated-only", action="store_true",
                        help="with --gate: measure only the gated rows, not the adapters alone (about half the time)")
    add_config_argument(parser, ("gate",))


def output_paths(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """(leakage.md, leakage.json) of ``--out`` (a folder; an old ``--out FILE.md`` still works, with a warning)."""
    if args.out is None:
        out = folder
    else:
        out = Path(args.out).expanduser()
        if out.suffix == ".md" and not out.is_dir():
            warn(f"--out {out}: a Markdown file name is deprecated; --out takes a folder (leakage.md goes in it)")
            check_output_folder(out.parent, any_folder=True)
            return check_output_file(out), check_output_file(out.with_suffix(".json"))
    out = check_output_folder(out, any_folder=True)
    return check_output_file(out / "leakage.md"), check_output_file(out / "leakage.json")


def _profiles(specs: list[str]) -> dict[str, tuple[str, ...]]:
    """``--profile`` values → profile name ("cyber+hate", domains in the order given) → its domains."""
    profiles = [parse_profile(spec) for spec in specs]  # an empty or repeating profile is a PaletteError
    return {p.name: p.domains for p in profiles}


def run(args: argparse.Namespace) -> int:
    from palette_lens.compose.profiles import Profile, profile_adapters
    from palette_lens.data.attacks import professions_for
    from palette_lens.errors import PaletteError
    from palette_lens.evaluate.evaluator import EvalConfig
    from palette_lens.evaluate.leakage import AttackConfig, measure_leakage
    from palette_lens.gate.config import default_gate_layer
    from palette_lens.gate.features import GateFeatureCache
    from palette_lens.gate.gated_profile import GatedProfile
    from palette_lens.gate.training import fit_gate
    from palette_lens.pipeline.run_folder import RunFolder
    from palette_lens.pipeline.runs import load_run
    from palette_lens.util.atomic import atomic_write_text

    # everything that can be checked without the model first
    folder = Path(args.source).expanduser()
    if not folder.exists():
        raise PaletteError(f"run folder not found: {folder}")
    folder = check_folder_input(folder)
    have = RunFolder(folder).adapter_domains()
    if not have:
        raise PaletteError(f"{folder} holds no adapters (expected {folder}/adapters/<domain>/)")
    wanted = _profiles(args.profile or have)
    missing = [d for d in dict.fromkeys(d for p in wanted.values() for d in p) if d not in have]
    if missing:
        raise PaletteError(f"{folder} has no adapter for {', '.join(missing)}; it has {', '.join(have)}")
    prompts = load_data_from_args(args)
    for d in dict.fromkeys(d for p in wanted.values() for d in p):
        prompts.check_domain(d)
        if d not in prompts.harmful_domains:
            raise PaletteError(f"a profile must be made of harmful domains, not {d!r}")
    if any(len(p) >= len(prompts.harmful_domains) for p in wanted.values()):
        raise PaletteError("a profile must leave at least one harmful domain unauthorized to measure leakage")
    kinds = tuple(dict.fromkeys(args.attack or ATTACK_KINDS))
    if "profession" in kinds:
        for p in wanted.values():
            professions_for(p)
    out_md, out_json = output_paths(args, folder)

    run_config, data_hash = run_settings(folder)
    weight = compose_weight_for(args.compose_weight, run_config)
    if data_hash and data_hash != prompts.data_hash():
        log.warning("the prompts differ from the run's (data hash %s, run %s): the test split may not be held out",
                    prompts.data_hash(), data_hash)
    defaults = EvalConfig()
    eval_config = EvalConfig(
        max_new_tokens=args.max_new_tokens or int(run_config.get("max_new_tokens") or defaults.max_new_tokens),
        batch_size=args.batch_size or int(run_config.get("batch_size") or defaults.batch_size),
        first_phase=int(run_config.get("first_phase") or defaults.first_phase),
    )
    config = AttackConfig(kinds=kinds, limit=args.limit, seed=args.attack_seed, mixed_order=args.mixed_order)

    if args.gated_only and not args.gate:
        raise PaletteError("--gated-only needs --gate")
    check_gate_flags_need_gate(args)
    gate_config = gate_config_from_args(args)

    model = load_model_from_args(args)
    artifacts = load_run(folder, model, list(dict.fromkeys(d for p in wanted.values() for d in p)))
    adapters = {name: [artifacts.adapters[d] for d in p] for name, p in wanted.items()}
    # merged rows as the pipeline merges them: a composed profile's ΔW each weighted by the composition weight
    profiles: dict = {name: profile_adapters(Profile(p), artifacts.adapters, weight) for name, p in wanted.items()}
    authorized = dict(wanted)
    gates = {}
    if gate_config is not None:
        gate_layer = default_gate_layer(model) if gate_config.layer is None else gate_config.layer
        early = [a for a in artifacts.adapters.values() if a.layer_index < gate_layer]
        if early:  # before any gate is trained
            raise PaletteError(f"adapter {early[0].domain!r} sits at block {early[0].layer_index}, before the gate's "
                               f"layer {gate_layer}: the gate would decide after it ran (choose --gate-layer "
                               f"{early[0].layer_index} or lower)")
        feature_cache = GateFeatureCache(model)
        for name, p in wanted.items():
            gate = fit_gate(model, prompts, p, gate_config, feature_cache=feature_cache)
            gate.save(RunFolder(out_md.parent).gate_dir(name))
            gated = f"{name} gated"
            routing = "routed" if gate.classes or len(p) == 1 else "merged"  # a binary probe cannot name the domain
            profiles[gated] = GatedProfile(model, adapters[name], gate, routing=routing, compose_weight=weight)
            authorized[gated], gates[gated] = p, gate
        if args.gated_only:
            for name in wanted:
                del profiles[name], authorized[name]
    table = measure_leakage(model, prompts, profiles, config, eval_config, cache=not args.no_cache,
                            authorized=authorized, gates=gates)
    table.settings["run_folder"] = str(folder)
    table.settings["data_hash"] = prompts.data_hash()
    table.settings["compose_weight"] = weight
    atomic_write_text(out_json, json.dumps(table.to_dict(), indent=1))
    text = table.markdown() + "\n\nRefusal on the authorized domain (should fall):\n\n" + table.markdown_target() + "\n"
    atomic_write_text(out_md, text)
    echo(text)
    over = table.over_budget
    echo(f"rows over the {config.budget_pts:g}-point budget: "
         + (", ".join(f"{r.profile}/{r.attack} ({r.extra_leakage_pts:+.0f})" for r in over) if over else "none"))
    echo(f"written: {out_md}, {out_json}")
    return 0
