"""The package's layers: imports point one way, no cycles, no private names across stages, a light import.

Every ``import`` in ``palette_lens`` is read from the source (top-level, inside functions and under
``TYPE_CHECKING``), so an import hidden in a function cannot climb a layer unnoticed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "palette_lens"

# Stage (first component below palette_lens) -> layer. A module may import its own stage and lower layers;
# stages of one layer do not import each other.
LAYERS: dict[str, int] = {
    "errors": 0,
    "util": 0,
    "models": 1,
    "data": 1,
    "refusal": 2,
    "generation": 3,
    "search": 4,
    "geometry": 4,
    "adapters": 4,
    "bake": 5,
    "compose": 5,
    "gate": 5,
    "baselines": 5,
    "evaluate": 6,
    "report": 7,
    "viz": 7,
    "pipeline": 8,
    "cli": 9,
    "notebooks": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every palette_lens import in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "palette_lens" or target.startswith("palette_lens."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in MODULES:
                        found.append((sub, "", node.lineno))
                    else:
                        found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("palette_lens"):
                    found.append((alias.name, "", node.lineno))
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_layer():
    unknown = sorted({_stage(m) for m in MODULES if _stage(m) and _stage(m) not in LAYERS})
    assert not unknown, f"stages without a layer in LAYERS: {unknown}"


def test_imports_point_down():
    upward = []
    for name, path in MODULES.items():
        if name == "palette_lens":
            continue  # the public API names everything, lazily
        layer = LAYERS[_stage(name)]
        for target, _, line in _imports(name, path):
            if target == "palette_lens":
                upward.append(f"{name}:{line} imports the top-level package")
                continue
            stage = _stage(target)
            if stage != _stage(name) and LAYERS[stage] >= layer:
                upward.append(f"{name}:{line} -> {target} (layer {layer} -> {LAYERS[stage]})")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {
        name: {t for t, _, _ in _imports(name, path) if t in MODULES and t != name}
        for name, path in MODULES.items()
        if name != "palette_lens"
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    private = [
        f"{name}:{line} imports {target}.{imported}"
        for name, path in MODULES.items()
        for target, imported, line in _imports(name, path)
        if imported.startswith("_") and target != name
    ]
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_no_module_level_getattr_shims():
    """Only the public API (and the viz namespace) resolve names lazily; no module re-exports by ``__getattr__``."""
    allowed = {"palette_lens", "palette_lens.viz"}
    shims = [
        name
        for name, path in MODULES.items()
        if name not in allowed
        and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(path.read_text()).body)
    ]
    assert not shims, f"modules with a __getattr__ shim: {shims}"


@pytest.mark.parametrize("statement", ["import palette_lens", "import palette_lens.cli.app"])
def test_light_imports_do_not_load_torch(statement):
    code = f"{statement}; import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
