"""Arguments and helpers shared by several commands."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def compose_weight(text: str) -> float:
    """argparse type: a composition weight, a finite number in (0, 2]."""
    value = float(text)
    if not math.isfinite(value) or not 0.0 < value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 2], not {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def mix_weights(text: str) -> tuple[float, float, float, float]:
    """argparse type: four sampling weights ``target:other:harmless:borderline`` (``,`` also separates)."""
    parts = text.replace(",", ":").split(":")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) and v >= 0 for v in values) or values[0] == 0:
        raise argparse.ArgumentTypeError(
            f"must be four non-negative weights target:other:harmless:borderline with target > 0, not {text!r}"
        )
    return values  # type: ignore[return-value]


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--device-map``."""
    parser.add_argument("--model", default=None, help="HF id, local HF folder or .gguf file (default: embedded model)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="weight dtype: float32 (default), bfloat16, float16")
    parser.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data FILE ...``, ``--replace-data``, ``--seed``."""
    parser.add_argument("--data", nargs="*", default=[], metavar="FILE.jsonl", help="user prompt files")
    parser.add_argument("--replace-data", action="store_true", help="use only the given files for harmful domains")
    parser.add_argument("--seed", type=int, default=0, help="split seed")


def add_gate_arguments(parser: argparse.ArgumentParser, gate_help: str) -> None:
    """``--gate``, ``--gate-layer``, ``--gate-threshold``, ``--gate-probe``, ``--gate-kinds``,
    ``--gate-authorized-variants``, ``--gate-segment-veto`` (a domain gate, :mod:`palette_lens.gate.domain_gate`)."""
    parser.add_argument("--gate", action="store_true", help=gate_help)
    parser.add_argument("--gate-layer", type=int, default=None, metavar="L",
                        help="the layer the gate reads (default: a quarter of the way through the model)")
    parser.add_argument("--gate-threshold", type=float, default=0.3, metavar="P",
                        help="the gate opens above this probability (default 0.3)")
    parser.add_argument("--gate-probe", choices=("domains", "binary"), default="domains",
                        help="the gate's probe: 'domains' names the prompt's domain and opens on the authorized "
                             "ones (default), 'binary' is authorized against the rest")
    parser.add_argument("--gate-kinds", default=None, metavar="K[,K...]",
                        help="attack kinds of the adversarial variants the gate trains on as closed examples "
                             "(profession, roleplay, mixed; 'none' for no variants; default: all three). Leave one "
                             "out to measure the gate against an attack family it never saw")
    parser.add_argument("--gate-authorized-variants", default=None, metavar="K[,K...]",
                        help="kinds of variants of the authorized prompts the gate trains on as open examples "
                             "(profession, roleplay; 'none' for none; default: the library's, profession), so that "
                             "a request framed by its own profession is read by the request")
    parser.add_argument("--gate-segment-veto", default=None, metavar="P",
                        help="also read each sentence of a prompt the gate opens for, and keep the gate shut when "
                             "one reads as another harmful domain with probability above P ('off' to read prompts "
                             "whole only; default: the library's, 0.5; domain probe only)")


def _kind_list(text: str) -> tuple[str, ...]:
    """``"a, b,a"`` → ("a", "b"); ``"none"`` → ()."""
    if text.strip().lower() == "none":
        return ()
    return tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))


def gate_config_from_args(args: argparse.Namespace):
    """The :class:`palette_lens.gate.domain_gate.GateConfig` of ``--gate*`` (checked before the model loads), or None.

    Settings not given keep :class:`~palette_lens.gate.domain_gate.GateConfig`'s defaults; a binary probe has no segment veto
    unless one is asked for (and then it is an error).
    """
    from palette_lens.errors import PaletteError
    from palette_lens.gate.domain_gate import GateConfig

    if not args.gate:
        return None
    settings: dict = {"layer": args.gate_layer, "threshold": args.gate_threshold, "probe": args.gate_probe}
    if args.gate_kinds is not None:
        kinds = _kind_list(args.gate_kinds)
        if args.gate_kinds.strip().lower() == "none":
            settings["adversarial"] = False
        else:
            settings["adversarial_kinds"] = kinds
    if args.gate_authorized_variants is not None:
        settings["authorized_variants"] = _kind_list(args.gate_authorized_variants)
    veto = args.gate_segment_veto
    if veto is None:
        if args.gate_probe == "binary":
            settings["segment_veto"] = None
    elif veto.strip().lower() == "off":
        settings["segment_veto"] = None
    else:
        try:
            settings["segment_veto"] = float(veto)
        except ValueError:
            raise PaletteError(f"--gate-segment-veto takes a probability or 'off', not {veto!r}") from None
    return GateConfig(**settings)


def load_model_from_args(args: argparse.Namespace):
    from palette_lens.models.loading import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)


def load_data_from_args(args: argparse.Namespace):
    """The prompt set of ``--data`` / ``--replace-data`` / ``--seed``, every domain checked to split.

    Checking the splits here reports a domain with too few prompts before the model is loaded.
    """
    from palette_lens.data.prompts import load_prompts

    prompts = load_prompts(args.data, replace=args.replace_data, seed=args.seed)
    for domain in prompts.domains:
        prompts.split(domain)
    return prompts


def echo(text: str = "") -> None:
    """Write a line to standard output (the commands' user-facing output)."""
    import sys

    sys.stdout.write(text + "\n")
    sys.stdout.flush()
