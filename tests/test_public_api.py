"""The public API (``import palette_lens as pl``): every exported name resolves, the import is light, no
submodule shadows an exported name, every exported callable is documented, and the notebooks, the README
and the docs use only the public API.

Fast: nothing here loads a model; the two subprocess tests import the package's modules (torch included).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import palette_lens as pl

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MARKDOWN = [ROOT / "README.md", ROOT / "notebooks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NAMESPACES = {"viz": "palette_lens.viz", "widgets": "palette_lens.viz.widgets"}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


# --- every exported name resolves -----------------------------------------------------------------------


@pytest.mark.parametrize("name", pl.__all__)
def test_exported_name_resolves(name):
    assert getattr(pl, name) is not None
    assert name in dir(pl)


def test_all_matches_exports():
    declared = set(pl._EXPORTS) | set(pl._NAMESPACES) | {"__version__"}
    assert len(pl.__all__) == len(set(pl.__all__)), "duplicate names in palette_lens.__all__"
    assert set(pl.__all__) == declared, (
        f"in __all__ only: {sorted(set(pl.__all__) - declared)}; declared only: {sorted(declared - set(pl.__all__))}")


def test_type_checking_block_lists_every_export():
    """The ``if TYPE_CHECKING:`` imports (for IDEs) import each exported name from the module in _EXPORTS."""
    tree = ast.parse((ROOT / "palette_lens" / "__init__.py").read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    imported = {}
    for node in ast.walk(block):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    expected = {name: f"{module}.{name}" for name, module in pl._EXPORTS.items()}
    expected |= {name: module for name, module in NAMESPACES.items()}
    assert imported == expected


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError):
        pl.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", pl.viz.__all__)
def test_viz_name_resolves(name):
    assert callable(getattr(pl.viz, name))
    assert name in dir(pl.viz)


def test_namespaces():
    assert pl.viz is importlib.import_module("palette_lens.viz")
    assert pl.widgets is importlib.import_module("palette_lens.viz.widgets")
    for name in ("ProfileChat", "LayerExplorer"):
        assert inspect.isclass(getattr(pl.widgets, name))


# --- a light import -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("statement", "heavy"), [
    ("import palette_lens", ("torch",)),
    ("import palette_lens as pl; pl.__all__; dir(pl)", ("torch",)),
    ("import palette_lens.viz", ("torch", "plotly")),
])
def test_import_is_light(statement, heavy):
    done = _run(f"{statement}\nimport sys\nprint(sorted(m for m in {heavy!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{statement!r} imported {done.stdout.strip()}"


# --- the shadowing trap: a submodule imported later must not replace an exported name ----------------------


def test_no_exported_name_is_a_subpackage():
    subpackages = {p.name for p in (ROOT / "palette_lens").iterdir() if (p / "__init__.py").exists()}
    submodules = {p.stem for p in (ROOT / "palette_lens").glob("*.py")} - {"__init__"}
    clash = (set(pl.__all__) & (subpackages | submodules)) - {"viz"}
    assert not clash, f"exported names that are also submodules of palette_lens: {sorted(clash)}"


def test_submodules_do_not_shadow_exports():
    """Import every module of the package first, then check each ``pl.<name>`` is the object of _EXPORTS."""
    done = _run("""
        import importlib, json, pkgutil, sys, types
        import palette_lens as pl

        failed = {}
        for info in pkgutil.walk_packages(pl.__path__, prefix="palette_lens."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # reported, not fatal: the check below still runs
                failed[info.name] = repr(exc)
        problems = []
        for name, module in pl._EXPORTS.items():
            got, want = getattr(pl, name), getattr(importlib.import_module(module), name)
            if got is not want or isinstance(got, types.ModuleType):
                problems.append(f"pl.{name} is {got!r}, not {module}.{name}")
        for name, module in pl._NAMESPACES.items():
            if getattr(pl, name) is not sys.modules[module]:
                problems.append(f"pl.{name} is {getattr(pl, name)!r}, not the module {module}")
        for name in pl.viz.__all__:
            got = getattr(pl.viz, name)
            module = pl.viz._EXPORTS[name]
            if got is not getattr(sys.modules[module], name):
                problems.append(f"pl.viz.{name} is {got!r}, not {module}.{name}")
        print(json.dumps({"failed": failed, "problems": problems}))
    """)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["failed"], f"submodules that do not import: {report['failed']}"
    assert not report["problems"], "\n".join(report["problems"])


# --- docstrings -----------------------------------------------------------------------------------------


def _public_callables() -> dict[str, object]:
    found = {}
    for name in pl._EXPORTS:
        obj = getattr(pl, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            found[f"pl.{name}"] = obj
    for name in pl.viz.__all__:
        found[f"pl.viz.{name}"] = getattr(pl.viz, name)
    for name, obj in vars(pl.widgets).items():
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) \
                and obj.__module__ == pl.widgets.__name__:
            found[f"pl.widgets.{name}"] = obj
    return found


PUBLIC_CALLABLES = _public_callables()


def _own_doc(obj) -> str:
    """The object's own docstring ('' for none, or for the signature a dataclass writes when there is none)."""
    doc = obj.__doc__ or ""
    if inspect.isclass(obj) and re.match(rf"{re.escape(obj.__name__)}\(.*\)$", doc.strip(), re.DOTALL):
        return ""  # dataclasses.dataclass fills __doc__ with the signature
    return inspect.cleandoc(doc)


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLABLES))
def test_public_callable_has_docstring(name):
    assert _own_doc(PUBLIC_CALLABLES[name]), f"{name} has no docstring"


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLABLES))
def test_public_callable_docstring_has_example(name):
    assert "Example" in _own_doc(PUBLIC_CALLABLES[name]), f"{name}'s docstring has no 'Example:' section"


# --- notebooks, README and docs use only the public API -------------------------------------------------


def _parse(source: str) -> ast.Module:
    """Parse a cell, blanking IPython magics and shell lines (``%...``, ``!...``)."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
    return ast.parse("\n".join(lines))


def _api_problems(tree: ast.Module) -> list[str]:
    """Imports of palette_lens other than ``import palette_lens as pl``, and ``pl.<...>`` names that do not exist."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "palette_lens":
            problems.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "palette_lens" and (alias.name, alias.asname) != ("palette_lens", "pl"):
                    problems.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Name) and node.id == "pl" and not isinstance(node.ctx, ast.Load):
            problems.append(f"line {node.lineno}: `pl` is rebound")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not (isinstance(base, ast.Name) and base.id == "pl"):
            continue
        # pl.<name>, pl.viz.<name>, pl.widgets.<name>, then one attribute of a class (pl.EvalSet.build)
        obj, path = pl, "pl"
        for attr in chain:
            if not hasattr(obj, attr):
                problems.append(f"line {node.lineno}: {path}.{attr} does not exist")
                break
            if inspect.isclass(obj):
                break
            obj, path = getattr(obj, attr), f"{path}.{attr}"
            if not (isinstance(obj, types.ModuleType) or inspect.isclass(obj)):
                break
    return sorted(set(problems))


def _code_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_only_the_public_api(path):
    problems, imports = [], 0
    for i, source in _code_cells(path):
        tree = _parse(source)  # every code cell must parse
        imports += sum(isinstance(n, ast.Import) and any(a.name == "palette_lens" for a in n.names)
                       for n in ast.walk(tree))
        problems += [f"cell {i}, {p}" for p in _api_problems(tree)]
        problems += [f"cell {i}: mentions a submodule path {m!r}"
                     for m in re.findall(r"palette_lens\.\w+[\w.]*", source)]
    assert not problems, "\n".join(problems)
    assert imports == 1, f"{path.name}: `import palette_lens as pl` should appear once, found {imports}"


def _python_blocks(text: str) -> list[tuple[int, str]]:
    """(line, code) of each ```python / ```py / ```pycon block; doctest prompts are stripped."""
    blocks = []
    for match in re.finditer(r"^```[ \t]*(python|py|python3|pycon)[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        code = match.group(2)
        if re.search(r"^\s*>>> ", code, re.MULTILINE):
            code = "\n".join(line.strip()[4:] for line in code.splitlines()
                             if line.strip().startswith((">>> ", "... ")))
        blocks.append((text.count("\n", 0, match.start()) + 1, textwrap.dedent(code)))
    return blocks


@pytest.mark.parametrize("path", [p for p in MARKDOWN if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_uses_only_the_public_api(path):
    problems = []
    for line, code in _python_blocks(path.read_text(encoding="utf-8")):
        if "palette_lens" not in code and "pl." not in code:
            continue
        try:
            tree = _parse(code)
        except SyntaxError:
            continue  # not Python (shell, output, pseudo-code)
        problems += [f"block at line {line}, {p}" for p in _api_problems(tree)]
    assert not problems, "\n".join(problems)
