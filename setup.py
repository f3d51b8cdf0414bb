"""Build hook: ship the built-in prompt sets inside the wheel.

All metadata lives in pyproject.toml. The repository's top-level ``data/`` folder is the single source of
the built-in prompts; ``build_py`` copies ``data/*.jsonl``, the gate pool ``data/gate/*.jsonl`` and
``data/README.md`` (provenance and content warning) into the built package as ``palette_lens/data/builtin/``, where
``palette_lens.data.prompts.builtin_data_dir()`` finds them through ``importlib.resources``. Nothing is
written into the source tree. An sdist carries ``data/`` (MANIFEST.in), so sdist -> wheel works too.
Editable installs (``pip install -e .``) copy nothing: the loader falls back to the checkout's ``data/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

DATA_DIR = Path("data")  # relative to the project root, the working directory of every build
TARGET = ("palette_lens", "data", "builtin")


def _prompt_files() -> list[Path]:
    files = sorted(DATA_DIR.glob("*.jsonl"))
    if not files:
        raise SetupError(f"no built-in prompt files (*.jsonl) in {DATA_DIR.resolve()}; cannot build the package")
    readme = DATA_DIR / "README.md"
    gate_pool = sorted((DATA_DIR / "gate").glob("*.jsonl"))
    return files + gate_pool + ([readme] if readme.is_file() else [])


class build_py_with_prompts(build_py):
    """``build_py`` that also copies the built-in prompt sets into ``palette_lens/data/builtin/``."""

    def _target(self) -> Path:
        return Path(self.build_lib, *TARGET)

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = self._target()
        if target.exists() and not self.dry_run:
            shutil.rmtree(target)  # a reused build/ must not keep prompt files deleted from data/
        self.mkpath(str(target))
        for src in _prompt_files():
            dest = target / src.relative_to(DATA_DIR)
            self.mkpath(str(dest.parent))
            self.copy_file(str(src), str(dest))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(self._target() / src.relative_to(DATA_DIR)) for src in _prompt_files()]


setup(cmdclass={"build_py": build_py_with_prompts})
