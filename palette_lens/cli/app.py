"""Command line: ``palette-lens <command> ...``; each command lives in ``palette_lens.cli.<name>``.

Every command checks its whole input (arguments, files, folders, profiles, the output location) before it
loads a model. Errors the user can fix (:class:`palette_lens.errors.PaletteError` and argparse's usage errors)
print ``palette-lens: error: ...`` and at most one more line naming the fix, exit code 2; operating-system
errors (disk full) and unexpected errors one line, exit code 1, never a traceback (``-v`` shows the traceback of
an unexpected error). Building the parser imports no torch: ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from palette_lens.errors import PaletteError

# command name -> (module in palette_lens.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the whole pipeline on the built-in data, with report.html and metrics.json"),
    "run": ("run", "the whole pipeline for chosen target domains and your own data"),
    "baseline": ("baseline", "refusal rates of the unmodified model per domain (test split)"),
    "search": ("search", "find a refusal direction for one target domain"),
    "bake": ("bake", "bake a direction into a single-block LoRA adapter"),
    "compose": ("compose", "compose domain adapters into an authorization profile (and export it)"),
    "evaluate": ("evaluate", "evaluate saved adapters, their profiles and the baselines"),
    "leakage": ("leakage", "refusal of the other domains under adversarial prompts"),
    "utility": ("utility", "HumanEval pass@1 of vanilla and of a run's profiles (merged and gated)"),
}

DESCRIPTION = """\
palette-lens makes a chat model answer the harmful-looking requests of the domains you authorize (say, cyber
security for a security team) while it keeps refusing every other harmful domain. It finds the direction
along which the model refuses each domain, bakes it into a small LoRA adapter, composes adapters into a
profile, and measures what the profile answers and what it still refuses.

Start with `palette-lens demo --quick` (minutes on a CPU), then `palette-lens run --target DOMAIN --data
FILE.jsonl` for your own domains. `palette-lens COMMAND --help` lists a command's options."""

EPILOG = "The user guide's CLI page (docs/cli.md) lists every option and every error."


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (``(default: X)``) unless its help already names one; ``(required)`` for
    required options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.help is argparse.SUPPRESS or action.nargs == 0 or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        default = action.default
        if default is None or default is argparse.SUPPRESS or default == [] or default == "":
            return text
        shown = ",".join(str(v) for v in default) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


_TYPE_WORDS = {"int": "a whole number", "float": "a number"}


def _readable(message: str) -> str:
    """argparse's message without internal names (``invalid positive_int value: 'x'`` → ``invalid value 'x'``)."""
    def repl(m: re.Match) -> str:
        word = _TYPE_WORDS.get(m.group(1))
        return f"expected {word}, not {m.group(2)}" if word else f"invalid value {m.group(2)}"

    message = re.sub(r"invalid (\w+) value: (.+)$", repl, message)
    if message == "the following arguments are required: command":
        return "choose a command: " + ", ".join(COMMANDS)
    return message


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are ``palette-lens: error: ...`` plus one line naming the help."""

    def error(self, message: str):  # type: ignore[override]
        print(f"palette-lens: error: {' '.join(_readable(message).split())}", file=sys.stderr)
        print(f"usage: {self.prog} --help lists the options", file=sys.stderr)
        sys.exit(2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"palette-lens {version('palette-lens')}"
    except PackageNotFoundError:  # a source tree that is not installed
        return "palette-lens 0+unknown"


def build_parser() -> argparse.ArgumentParser:
    verbose = Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="debug logging, and the traceback of an unexpected error")
    parser = Parser(prog="palette-lens", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="debug logging, and the traceback of an unexpected error (also after the command)")
    parser.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(f"palette_lens.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"palette_lens.cli.{module_name}":
                continue  # command not available in this build
            raise
        text = re.sub(r":\w+:`([^`]*)`", r"\1", (module.__doc__ or help_text).replace("``", ""))  # no reST markup
        doc = text.split("\n\n", 1)
        p = sub.add_parser(name, help=help_text, description=doc[1].strip() if len(doc) > 1 else help_text,
                           parents=[verbose], formatter_class=HelpFormatter, epilog=EPILOG)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(text: object) -> str:
    """``text`` on one line (messages from other libraries can span several)."""
    return " ".join(str(text).split()) or "(no message)"


def error(message: object) -> None:
    """Print ``palette-lens: error: <message>`` as one line on standard error."""
    print(f"palette-lens: error: {_one_line(message)}", file=sys.stderr)


def check_model_args(args: argparse.Namespace) -> None:
    """``--device`` and ``--device-map`` checked before any command starts (nothing loads here)."""
    from palette_lens.errors import ModelLoadError
    from palette_lens.models.loading import resolve_device

    if getattr(args, "device", None) is not None and getattr(args, "device_map", None) is not None:
        raise ModelLoadError("pass either --device or --device-map, not both")
    if getattr(args, "device", None) is not None:
        resolve_device(args.device)


def main(argv: list[str] | None = None) -> int:
    """Run a command; user-fixable errors give one line on stderr and a non-zero exit code.

    Exit codes: 0 success, 2 bad input (:class:`PaletteError`, also argparse's usage errors), 1 an
    operating-system error (disk full, permission denied, ...) or an unexpected error (with ``-v`` the
    traceback is shown), 130 interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.error("the following arguments are required: command")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        check_model_args(args)
        return int(args._run(args) or 0)
    except PaletteError as exc:
        error(exc)
        return 2
    except KeyboardInterrupt:
        print("palette-lens: interrupted (outputs written so far are complete files)", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        error(f"{exc.strerror or exc}{where}; outputs written so far are complete files")
        return 1
    except Exception as exc:  # never a traceback unless asked for (-v)
        if args.verbose:
            raise
        error(f"unexpected {type(exc).__name__}: {exc} (rerun with -v for the traceback and please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
