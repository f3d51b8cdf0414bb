"""Command line: ``palette-lens <command> ...``; each command lives in ``palette_lens.cli.<name>``.

Errors the user can fix (:class:`palette_lens.errors.PaletteError`), operating-system errors (disk full)
and unexpected errors are printed as one line with a non-zero exit code, never as a traceback (``-v``
shows the traceback of an unexpected error).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from palette_lens.errors import PaletteError

# command name -> (module in palette_lens.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "baseline": ("baseline", "refusal rates of the unmodified model per domain (test split)"),
    "search": ("search", "multi-objective refusal-direction search for one target domain"),
    "bake": ("bake", "bake a chosen direction into a single-block LoRA adapter"),
    "compose": ("compose", "compose domain adapters into an authorization profile"),
    "evaluate": ("evaluate", "evaluate adapters / profiles and baselines"),
    "run": ("run", "the whole pipeline for chosen target domains and user data"),
    "demo": ("demo", "the whole pipeline on the built-in data, with report.html and metrics.json"),
    "leakage": ("leakage", "non-target refusal of single-domain profiles under adversarial prompts"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palette-lens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(f"palette_lens.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"palette_lens.cli.{module_name}":
                continue  # command not available in this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(text: object) -> str:
    """``text`` on one line (messages from other libraries can span several)."""
    return " ".join(str(text).split()) or "(no message)"


def error(message: object) -> None:
    """Print ``palette-lens: error: <message>`` as one line on standard error."""
    print(f"palette-lens: error: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a command; user-fixable errors give one line on stderr and a non-zero exit code.

    Exit codes: 0 success, 2 bad input (:class:`PaletteError`, also argparse's usage errors), 1 an
    operating-system error (disk full, permission denied, ...) or an unexpected error (with ``-v`` the
    traceback is shown), 130 interrupted.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
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
