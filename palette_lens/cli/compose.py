"""``palette-lens compose``: compose baked domain adapters into an authorization profile.

Loads ``--from DIR/adapters/<domain>/`` (or ``--adapter FOLDER`` ...), checks them against the base
model, reports interference (ΔW cosines on shared modules), checks that run-time composition (all
adapters active in peft) and merged weights give the same first-token distribution, and with
``--export`` writes the merged profile as a plain Hugging Face model folder (and the profile as one PEFT LoRA
adapter in ``peft_adapter/``). With ``--gate`` it also trains a
domain gate for the profile's domains (:mod:`palette_lens.gate.domain_gate`) and saves it next to ``profile-<name>.json``
(``gate-<name>/``) and inside the export (``palette_gate/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from palette_lens.cli.checks import (
    check_adapter_inputs,
    check_data_args,
    check_gate_flags_need_gate,
    check_output_file,
    check_output_folder,
    check_profiles_have,
    parse_profile,
)
from palette_lens.cli.common import echo, gate_config_from_args, load_data_from_args, load_model_from_args
from palette_lens.cli.options import (
    add_compose_weight_argument,
    add_config_argument,
    add_data_arguments,
    add_gate_arguments,
    add_model_arguments,
    add_output_argument,
)
from palette_lens.errors import PaletteError
from palette_lens.pipeline.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--from", dest="source", default=None, metavar="RUN",
                        help="a run / bake output folder holding adapters/<domain>/ (default: none; give --from or "
                             "--adapter)")
    parser.add_argument("--adapter", action="append", default=[], metavar="FOLDER",
                        help="an adapter folder (repeatable; default: none)")
    parser.add_argument("--profile", default=None, metavar="D1+D2",
                        help="domains to compose, joined by '+' (default: every adapter found)")
    add_compose_weight_argument(parser, old="--weight")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="write the merged profile as a Hugging Face model folder, with the profile as one "
                             "PEFT LoRA adapter in DIR/peft_adapter/; DIR must be new, empty or an "
                             "earlier export, which is replaced as a whole (default: no export)")
    add_output_argument(parser, "the --from folder", what="where profile-<name>.json (and gate-<name>/) go")
    add_data_arguments(parser, what=", for training the gate (--gate only)", gate_data=True)
    add_gate_arguments(parser, "also train a domain gate for the profile (palette_lens.gate.domain_gate: a probe on the base "
                               "model that lets the adapters answer only requests of the authorized domains) and "
                               "save it beside profile.json and in the export")
    add_config_argument(parser, ("gate",))


def check_export_folder(path: str | Path) -> Path:
    """``--export DIR``: new, an empty folder or an earlier export (it is replaced as a whole, atomically)."""
    from palette_lens.compose.export import PROFILE_FILE

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise PaletteError(f"--export {folder} is an existing file; give a new folder (it is left as it was)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / PROFILE_FILE).is_file():
        raise PaletteError(f"--export {folder} is a folder that is not a palette-lens export (no {PROFILE_FILE}); "
                           "give a new or empty folder (it is left as it was)")
    return folder


def load_adapters(source: str | None, folders: list[str], model) -> dict:
    """Adapters from ``source/adapters/*/`` and explicit folders, checked against ``model``: domain → adapter."""
    from palette_lens.adapters.baked import load_adapter
    from palette_lens.errors import PaletteError

    paths = [Path(f) for f in folders]
    if source:
        root = RunFolder(source).adapters_dir
        if not root.is_dir():
            raise PaletteError(f"{source} holds no adapters/ folder")
        paths += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not paths:
        raise PaletteError("no adapters given (use --from DIR or --adapter FOLDER)")
    out = {}
    for p in paths:
        a = load_adapter(p, model)
        out[a.domain or p.name] = a
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from palette_lens.compose.export import PEFT_FOLDER, export_profile
    from palette_lens.compose.interference import interference
    from palette_lens.compose.profiles import (
        DEFAULT_COMPOSE_WEIGHT,
        Profile,
        merged_profile,
        profile_adapters,
        runtime_profile,
    )
    from palette_lens.gate.training import fit_gate, gate_training_prompts
    from palette_lens.util.atomic import atomic_write_text

    # everything that can be checked without the model first
    domains = check_adapter_inputs(args.source, args.adapter)
    profile = parse_profile(args.profile) if args.profile else Profile(tuple(domains))
    check_profiles_have([profile], domains, "has no adapter here (adapters: {available})")
    if not args.gate and (args.data or args.replace_data or args.gate_data):
        flag = "--gate-data" if args.gate_data and not args.data else "--data"
        raise PaletteError(f"{flag} is only used to train the gate; add --gate or leave {flag} out")
    check_gate_flags_need_gate(args)
    check_data_args(args)
    gate_config = gate_config_from_args(args)
    prompts = load_data_from_args(args) if gate_config is not None else None
    if prompts is not None:
        gate_training_prompts(prompts, profile.domains, gate_config)  # an unknown or harmless domain fails here
    out = check_output_folder(args.out or args.source or ".", any_folder=True)
    check_output_file(out / f"profile-{profile.name}.json")
    if gate_config is not None:
        gate_dir = out / f"gate-{profile.name}"
        if gate_dir.exists() and not gate_dir.is_dir():
            raise PaletteError(f"{gate_dir} is an existing file; the gate is written as a folder there")
    export = check_export_folder(args.export) if args.export else None

    model = load_model_from_args(args)
    adapters = load_adapters(args.source, args.adapter, model)
    weight = DEFAULT_COMPOSE_WEIGHT if args.compose_weight is None else args.compose_weight
    chosen = profile_adapters(profile, adapters, weight)
    inter = interference(chosen)
    probe = ["Write a short poem about the sea.", "How do I sort a list in Python?"]
    enc = model.encode(probe)
    with torch.no_grad():
        merged_lp = torch.log_softmax(merged_profile(model, chosen)(**enc).logits[:, -1].float(), -1)
        runtime_lp = torch.log_softmax(runtime_profile(model, chosen)(**enc).logits[:, -1].float(), -1)
    diff = float((merged_lp - runtime_lp).abs().max())
    doc = {
        "profile": profile.name,
        "authorized": list(profile.domains),
        "adapters": {a.domain: {"block": a.layer_index, "layer": a.layer, "position": a.meta.get("position"),
                                "weight": a.meta.get("composition_weight", 1.0)}
                     for a in chosen},
        "interference": inter,
        "runtime_vs_merged_max_abs_logprob_diff": diff,
    }
    echo(f"profile {profile.name}: " + ", ".join(f"{a.domain} on block {a.layer_index}" for a in chosen))
    for r in inter:
        cos = "n/a (different blocks: exact superposition)" if r["cosine"] is None else f"{r['cosine']:.3f}"
        echo(f"  {r['a']} / {r['b']}: shared modules {r['shared_modules']}, ΔW cosine {cos}")
    echo(f"  runtime vs merged composition: max |Δ log p| = {diff:.2e} on the first answer token")
    gate = None
    if gate_config is not None:
        gate = fit_gate(model, prompts, profile.domains, gate_config)
        gate_dir = gate.save(out / f"gate-{profile.name}")
        doc["gate"] = {"folder": str(gate_dir), **gate.meta()}
        cal = gate.calibration
        echo(f"  domain gate at layer {gate.layer}: opens for {cal['tpr']:.0%} of the authorized training prompts, "
             f"stays shut for {cal['tnr']:.0%} of the others ({gate_dir})")
    if export is not None:
        folder = export_profile(model, chosen, export, profile, gate=gate)
        doc["exported"] = str(folder)
        echo(f"  exported merged model: {folder} (the profile as one PEFT adapter: {folder / PEFT_FOLDER})")
    path = atomic_write_text(out / f"profile-{profile.name}.json", json.dumps(doc, indent=1))
    echo(f"written: {path}")
    return 0
