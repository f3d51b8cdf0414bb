"""Regenerate the run that ships inside the package (palette_lens/pipeline/builtin_run/).

    .venv/bin/python scripts/make_builtin_run.py            # makes it in a temporary folder, then replaces the shipped one
    .venv/bin/python scripts/make_builtin_run.py --out DIR  # only makes it in DIR (new or empty)

It runs the search, bake and gate fitting of ``palette-lens demo --quick`` on the embedded default model
(about 12 minutes on two CPU cores); tests/test_builtin_run.py checks the quick demo reproduces it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import palette_lens as pl
from palette_lens.pipeline.builtin import builtin_run_dir, make_builtin_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="make the run here instead of replacing the shipped one")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="builtin-run-")) / "builtin_run"
    manifest = make_builtin_run(out, pl.load_model())
    print(f"made {len(manifest['files'])} files for {', '.join(manifest['targets'])} in {out}")
    if args.out is None:
        shipped = builtin_run_dir()
        if shipped.exists():
            shutil.rmtree(shipped)
        shutil.copytree(out, shipped)
        print(f"replaced {shipped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
