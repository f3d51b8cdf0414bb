"""Execute the notebooks headless with papermill: ``python -m palette_lens.notebooks.runner notebooks``.

Usage::

    python -m palette_lens.notebooks.runner notebooks                  # user-sized parameters
    python -m palette_lens.notebooks.runner notebooks --ci             # CI-sized parameters (minutes)
    python -m palette_lens.notebooks.runner notebooks --only 03 --param steps=60 --param 04:eval_limit=8
    python -m palette_lens.notebooks.runner notebooks --ci --run-dir runs/demo   # 03-05 read its adapters

Executed copies go to ``<folder>/_executed/`` (git-ignored). Each notebook runs in a fresh kernel of the
Python that runs this module (a ``palette-lens`` kernel spec is written into that environment's
``share/jupyter/kernels`` when missing; the user's own Jupyter configuration is never touched). On a
failure the runner prints one line naming the notebook and the cell and exits with status 1.

``--run-dir`` (or the environment variable ``PALETTE_LENS_RUN_DIR``) is passed as the ``run_dir``
parameter to the notebooks that declare one; without it they use their default, the run shipped with the
package (``"builtin"``: the embedded default model's adapters, :mod:`palette_lens.pipeline.builtin`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palette_lens.notebooks.kernel import (
    KERNEL_ENV,
    KERNEL_NAME,
    ensure_kernel,
    kernel_spec_dir,
)

log = logging.getLogger(__name__)

EXECUTED_DIR = "_executed"
RUN_DIR_ENV = "PALETTE_LENS_RUN_DIR"

#: CI-sized parameters per notebook (keyed by the two-digit prefix of the file name): small prompt counts,
#: few bake steps, short generations; every notebook still runs every cell and checks its claims.
CI_PARAMETERS: dict[str, dict[str, Any]] = {
    "01": {
        "domains": ["cyber", "disinformation", "violence"], "n_show": 2, "show_tokens": 20, "n_train": 8, "top_k": 3,
        "n_val": 4, "n_val_other": 1, "n_proxy": 3, "n_eval": 6, "n_gen": 2, "gen_tokens": 20,
    },
    "02": {"domains": ["cyber", "disinformation", "violence"], "n_per_domain": 8, "tsne_layers": [0, 8, 16], "layer_step": 2},
    "03": {
        "domains": ["cyber", "disinformation", "violence"], "steps": 24, "max_per_group": 16, "val_per_domain": 2,
        "eval_every": 12, "n_train": 8, "top_k": 3, "n_val": 4, "n_inspect": 4, "n_completions": 1,
        "max_new_tokens": 12,
    },
    "04": {
        "domains": ["cyber", "disinformation", "violence"], "n_score": 8, "eval_limit": 2, "harmless_limit": 2,
        "borderline_limit": 0, "max_new_tokens": 8, "latency_tokens": 4, "latency_batch": 2, "latency_repeats": 1, "n_train": 8,
        "n_attack": 8,
    },
    "05": {"max_new_tokens": 16, "n_candidates": 4},
}


# --------------------------------------------------------------------- notebooks and parameters
def find_notebooks(target: str | Path, only: Sequence[str] = ()) -> list[Path]:
    """The notebooks to run: ``target`` itself (a file) or the ``*.ipynb`` in it, sorted; ``only`` keeps
    those whose name starts with one of the given prefixes (e.g. "03")."""
    target = Path(target)
    if target.is_file():
        found = [target]
    elif target.is_dir():
        found = sorted(p for p in target.glob("*.ipynb") if not p.name.startswith("."))
    else:
        raise FileNotFoundError(f"no notebook or folder {target}")
    if only:
        found = [p for p in found if any(p.name.startswith(o) for o in only)]
    return found


def parameter_cells(nb: Any) -> list[int]:
    """Indices of the cells tagged ``parameters``."""
    return [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]


def declared_parameters(path: str | Path) -> dict[str, str]:
    """Names of the parameters a notebook declares (in its ``parameters`` cell) → their default's source."""
    import nbformat
    from papermill.translators import papermill_translators

    nb = nbformat.read(str(path), as_version=4)
    cells = parameter_cells(nb)
    if not cells:
        return {}
    translator = papermill_translators.find_translator(KERNEL_NAME, "python")
    params = translator.inspect(nb.cells[cells[0]])
    return {p.name: str(p.default) for p in params}


def parse_value(text: str) -> Any:
    """A ``--param`` value: JSON when it parses (numbers, lists, true/false/null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["k=v", "03:k=v"]`` → {"*": {k: v}, "03": {k: v}} ("*": every notebook)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--param takes key=value or NN:key=value, not {item!r}")
        key, value = item.split("=", 1)
        scope = "*"
        if ":" in key:
            scope, key = key.split(":", 1)
        out.setdefault(scope, {})[key.strip()] = parse_value(value)
    return out


def notebook_parameters(
    path: Path, declared: Mapping[str, str], ci: bool, overrides: Mapping[str, Mapping[str, Any]], run_dir: str | None
) -> dict[str, Any]:
    """The parameters injected into one notebook: CI sizes (with ``ci``), then ``run_dir``, then overrides.

    Only parameters the notebook declares are injected (a global override a notebook lacks is skipped);
    an override scoped to this notebook ("03:key=value") that it does not declare is an error.
    """
    prefix = path.name[:2]
    params: dict[str, Any] = {}
    if ci:
        params.update({k: v for k, v in CI_PARAMETERS.get(prefix, {}).items() if k in declared})
    if run_dir and "run_dir" in declared:
        params["run_dir"] = run_dir
    for k, v in overrides.get("*", {}).items():
        if k in declared:
            params[k] = v
    for k, v in overrides.get(prefix, {}).items():
        if k not in declared:
            raise ValueError(f"{path.name} has no parameter {k!r} (it has: {', '.join(declared)})")
        params[k] = v
    return params


# --------------------------------------------------------------------- running
@dataclass
class NotebookRun:
    """The outcome of one notebook: where its executed copy is, how long it took, what failed."""

    notebook: Path
    output: Path
    parameters: dict[str, Any]
    seconds: float = 0.0
    ok: bool = True
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        status = "ok" if self.ok else "FAILED"
        return f"{self.notebook.name:<34} {status:<6} {self.seconds:7.1f} s"


def failure_message(notebook: Path, exc: BaseException) -> str:
    """One line naming the notebook, the failing cell (its number among the notebook's cells and its first
    line) and the error."""
    where = "before any cell ran"
    source = getattr(exc, "source", None)
    if source is not None:
        number = None
        try:
            import nbformat

            cells = nbformat.read(str(notebook), as_version=4).cells
            number = next((i + 1 for i, c in enumerate(cells) if c.source.strip() == source.strip()), None)
        except Exception:  # the message is best effort; the error itself is kept
            log.debug("could not read %s to number the failing cell", notebook, exc_info=True)
        first_line = next((ln.strip() for ln in source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        if number is not None:
            where = f"cell {number}"
        elif "injected-parameters" in source or "Parameters" in source[:40]:
            where = "the injected parameters cell"
        else:
            where = "a cell"
        if first_line:
            where += f" ({first_line[:60]})"
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = " ".join(str(getattr(exc, "evalue", exc)).split())
    return f"{notebook.name} failed at {where}: {ename}: {evalue[:300]}"


def run_notebook(
    notebook: Path,
    out_dir: Path,
    parameters: Mapping[str, Any],
    kernel_name: str = KERNEL_NAME,
    timeout: int | None = None,
    progress: bool = False,
) -> NotebookRun:
    """Execute one notebook with papermill (working directory: the notebook's folder)."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    run = NotebookRun(notebook, output, dict(parameters))
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook), str(output), parameters=dict(parameters), kernel_name=kernel_name, language="python",
            cwd=str(notebook.parent), progress_bar=progress, execution_timeout=timeout, log_output=False,
        )
    except Exception as exc:  # noqa: BLE001 - reported as one line
        run.ok = False
        run.error = failure_message(notebook, exc)
    run.seconds = time.perf_counter() - t0
    return run


def run_notebooks(
    target: str | Path,
    *,
    ci: bool = False,
    only: Sequence[str] = (),
    params: Sequence[str] = (),
    run_dir: str | None = None,
    out_dir: str | Path | None = None,
    timeout: int | None = None,
    fail_fast: bool = False,
    progress: bool = False,
) -> list[NotebookRun]:
    """Execute the notebooks of ``target`` (see the module docstring); returns one record per notebook."""
    notebooks = find_notebooks(target, only)
    if not notebooks:
        raise FileNotFoundError(f"no notebooks to run in {target}" + (f" matching {', '.join(only)}" if only else ""))
    root = Path(target) if Path(target).is_dir() else Path(target).parent
    out = Path(out_dir) if out_dir is not None else root / EXECUTED_DIR
    overrides = parse_params(params)
    run_dir = run_dir if run_dir is not None else os.environ.get(RUN_DIR_ENV) or None
    declared_by = {nb: declared_parameters(nb) for nb in notebooks}
    if run_dir and run_dir != "builtin":
        run_dir = str(Path(run_dir).expanduser().resolve())
    kernel = ensure_kernel()
    for key, value in KERNEL_ENV.items():
        os.environ.setdefault(key, value)  # inherited by the kernels started below
    runs = []
    for nb in notebooks:
        declared = declared_by[nb]
        p = notebook_parameters(nb, declared, ci, overrides, run_dir)
        log.info("running %s with %s", nb.name, p)
        r = run_notebook(nb, out, p, kernel, timeout, progress)
        runs.append(r)
        if not r.ok and fail_fast:
            break
    return runs


def _say(line: str, stream=None) -> None:
    """One line of command-line output (stdout unless ``stream`` is given)."""
    (stream or sys.stdout).write(line + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m palette_lens.notebooks.runner", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="notebooks", help="a notebook or a folder of notebooks")
    parser.add_argument("--ci", action="store_true", help="CI-sized parameters (small prompt counts, short runs)")
    parser.add_argument("--only", action="append", default=[], metavar="NN", help="run notebooks starting with NN")
    parser.add_argument("--param", action="append", default=[], metavar="[NN:]KEY=VALUE",
                        help="set a parameter (JSON value, else a string); NN: for one notebook only")
    parser.add_argument("--run-dir", default=None,
                        help=f"run folder (demo/run output) for notebooks with a run_dir parameter (env {RUN_DIR_ENV})")
    parser.add_argument("--out", default=None, help=f"folder for executed copies (default: <target>/{EXECUTED_DIR})")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    parser.add_argument("--install-kernel", action="store_true", help="only write the kernel spec, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.install_kernel:
        ensure_kernel()
        _say(f"kernel spec {KERNEL_NAME!r}: {kernel_spec_dir()}")
        return 0
    try:
        runs = run_notebooks(
            args.target, ci=args.ci, only=args.only, params=args.param, run_dir=args.run_dir, out_dir=args.out,
            timeout=args.timeout, fail_fast=args.fail_fast,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _say(f"notebook_runner: error: {exc}", sys.stderr)
        return 2
    for r in runs:
        _say(r.line())
    failed = [r for r in runs if not r.ok]
    for r in failed:
        _say(f"notebook_runner: {r.error}", sys.stderr)
    _say(f"{len(runs) - len(failed)}/{len(runs)} notebooks ok in {sum(r.seconds for r in runs):.0f} s; "
          f"executed copies in {runs[0].output.parent if runs else '-'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
