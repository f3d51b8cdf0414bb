"""Notebooks: committed stripped with one papermill ``parameters`` cell; the runner; CI-sized execution.

The integration test executes all five notebooks headless (CI-sized parameters) on the default model,
with 03–05 reading the run shipped with the package (their default ``run_dir = "builtin"``, or the folder in
``$PALETTE_LENS_RUN_DIR``). The notebooks' own ``assert`` cells check the claims they
make; the test checks that every notebook ran to the end and produced plotly figures.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

from palette_lens.notebooks import runner as nr

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_refusal_directions", "02_domain_separation", "03_bake_and_inspect", "04_compose_profiles",
            "05_teaching_demo"]
PLOTLY = "application/vnd.plotly.v1+json"


# ---------------------------------------------------------------------- committed form (fast)
def test_the_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_has_one_parameters_cell(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i + 1} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i + 1} has an execution count"
    params = nr.parameter_cells(nb)
    assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters' (has {len(params)})"
    assert nb.cells[params[0]].cell_type == "code"
    assert nb.metadata.get("kernelspec", {}).get("language") == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_declared_and_ci_sizes_exist(path):
    nb = nbformat.read(str(path), as_version=4)
    source = nb.cells[nr.parameter_cells(nb)[0]].source
    assigned = re.findall(r"^(\w+)\s*=", source, flags=re.MULTILINE)
    declared = nr.declared_parameters(path)
    # papermill must parse every assignment (a ':' or '=' in a comment can hide one from it)
    assert sorted(declared) == sorted(assigned)
    ci = nr.CI_PARAMETERS[path.name[:2]]
    assert set(ci) <= set(declared), f"CI parameters not in {path.name}: {set(ci) - set(declared)}"
    if path.name[:2] in ("03", "04", "05"):
        assert "run_dir" in declared


def test_parameters_resolution(tmp_path):
    nb = Path("04_x.ipynb")
    declared = {"eval_limit": "12", "run_dir": "''", "max_new_tokens": "48"}
    over = nr.parse_params(["max_new_tokens=8", "04:eval_limit=2", "unknown=1", "03:steps=5"])
    assert over == {"*": {"max_new_tokens": 8, "unknown": 1}, "04": {"eval_limit": 2}, "03": {"steps": 5}}
    p = nr.notebook_parameters(nb, declared, ci=True, overrides=over, run_dir="/r")
    assert p == {"eval_limit": 2, "max_new_tokens": 8, "run_dir": "/r"}  # CI sizes, then overrides win
    assert nr.notebook_parameters(nb, declared, ci=False, overrides={}, run_dir=None) == {}
    with pytest.raises(ValueError, match="has no parameter 'steps'"):
        nr.notebook_parameters(Path("03_y.ipynb"), declared, ci=False, overrides=over, run_dir=None)
    assert nr.parse_value('["a", "b"]') == ["a", "b"] and nr.parse_value("cyber") == "cyber"
    with pytest.raises(ValueError):
        nr.parse_params(["novalue"])


def test_kernel_spec_is_written_into_the_given_prefix(tmp_path):
    assert nr.ensure_kernel(tmp_path) == nr.KERNEL_NAME
    spec = json.loads((nr.kernel_spec_dir(tmp_path) / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["argv"][1:3] == ["-m", "ipykernel_launcher"]


def _toy_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1\nlabel = 'a'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), params,
                nbformat.v4.new_code_cell("import plotly.graph_objects as go\ngo.Figure(go.Bar(y=[x]))"),
                nbformat.v4.new_code_cell("assert x == 2, f'x is {x}, label {label}'")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_runner_reports_the_failing_notebook_and_cell(tmp_path, capsys):
    """Executes a two-second toy notebook in a real kernel: failure message, exit code, parameters."""
    nb = _toy_notebook(tmp_path / "09_toy.ipynb")
    out = tmp_path / "out"
    assert nr.main([str(nb), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("notebook_runner:"))
    assert "09_toy.ipynb failed at cell 4" in line and "AssertionError: x is 1, label a" in line
    assert nr.main([str(tmp_path), "--out", str(out), "--param", "x=2", "--param", "09:label=b"]) == 0
    executed = nbformat.read(str(out / "09_toy.ipynb"), as_version=4)
    assert any(PLOTLY in o.get("data", {}) for c in executed.cells for o in c.get("outputs", []))
    assert nr.main([str(tmp_path / "missing")]) == 2


# ---------------------------------------------------------------------- execution (integration)
@pytest.mark.integration
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_ci_sized(name, notebook_runs):
    run = notebook_runs[name]
    print(f"\n{run.line()}", file=sys.stderr)
    assert run.ok, run.error
    executed = nbformat.read(str(run.output), as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    figures = [o for c in code for o in c.outputs if PLOTLY in o.get("data", {})]
    assert figures, "the notebook should show plotly figures"
    # each figure is also stored as HTML, so exports (nbconvert) show it
    assert all("text/html" in o["data"] for o in figures)
    if "run_dir" in nr.declared_parameters(NOTEBOOK_DIR / f"{name}.ipynb") and not os.environ.get(nr.RUN_DIR_ENV):
        printed = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
        assert "read from" in printed and "builtin_run" in printed, "the notebook should use the shipped adapters"
        assert "baked here" not in printed
