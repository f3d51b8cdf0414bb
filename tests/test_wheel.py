"""The wheel ships the built-in prompts and the shipped run: build it, install it in a fresh venv, load from there.

Also unit checks of ``builtin_data_dir()``'s order: ``$PALETTE_LENS_DATA``, the packaged copy, the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from palette_lens.data import prompts as prompts_mod
from palette_lens.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
BUILTIN = "palette_lens/data/builtin/"
RESERVED = {"harmless", "borderline"}
EXPECTED_DOMAINS = {"bio", "chem", "cyber", "disinformation", "hate", "illegal", "violence", "harmless", "borderline"}

CHILD = r"""
import json, sys, sysconfig
import palette_lens
from palette_lens.data.prompts import builtin_data_dir, load_prompts
from palette_lens.pipeline.builtin import builtin_run_dir, verify_builtin_run
manifest = verify_builtin_run()  # every shipped file present and unchanged
heavy = sorted(m for m in ("torch", "numpy", "transformers", "transformer_lens") if m in sys.modules)
print(json.dumps({
    "builtin_run": str(builtin_run_dir()),
    "builtin_files": len(manifest["files"]),
    "counts": load_prompts().counts(),
    "gate_pool": {d: len(v) for d, v in load_prompts().gate_pool.items()},
    "data_dir": str(builtin_data_dir()),
    "package": palette_lens.__file__,
    "purelib": sysconfig.get_paths()["purelib"],
    "heavy": heavy,
}))
"""


def _run(cmd, **kw):
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _repo_counts(folder: Path = DATA) -> Counter:
    counts: Counter = Counter()
    for f in folder.glob("*.jsonl"):
        for line in f.read_text(encoding="utf-8-sig").splitlines():
            if line.strip():
                counts[json.loads(line)["domain"]] += 1
    return counts


def test_wheel_ships_builtin_prompts_and_loads_them_outside_the_checkout(tmp_path):
    pytest.importorskip("setuptools", minversion="77", reason="the wheel is built without isolation (.[dev])")
    # Keep build/ and *.egg-info out of the checkout: setuptools reads this extra config (DIST_EXTRA_CONFIG).
    extra_cfg = tmp_path / "build.cfg"
    extra_cfg.write_text(f"[build]\nbuild_base = {tmp_path / 'build'}\n[egg_info]\negg_base = {tmp_path}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PALETTE_LENS_DATA")}
    env.update(DIST_EXTRA_CONFIG=str(extra_cfg), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(REPO)], env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("palette_lens-*.whl")
    assert (tmp_path / "build" / "lib").is_dir(), "the build did not use the temporary build folder"
    assert not (REPO / "palette_lens" / "data" / "builtin").exists(), "the build wrote into the source tree"

    # The wheel holds every data/*.jsonl, the gate pool data/gate/*.jsonl and the data README, byte for byte.
    sources = sorted(DATA.glob("*.jsonl"))
    pool = sorted((DATA / "gate").glob("*.jsonl"))
    assert {f.stem for f in sources} >= EXPECTED_DOMAINS and {f.stem for f in pool} == EXPECTED_DOMAINS - RESERVED
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n[len(BUILTIN):] for n in zf.namelist() if n.startswith(BUILTIN)}
        names = {f.relative_to(DATA).as_posix() for f in sources + pool}
        assert packaged == names | {"README.md"}
        for name in names:
            assert zf.read(BUILTIN + name) == (DATA / name).read_bytes(), name

    # A fresh venv (no pip of its own: the running pip installs into it), the wheel alone, no dependencies.
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(target)
    py = target / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], env=env, cwd=tmp_path)

    # Run away from the checkout: another cwd, isolated mode (-I: no PYTHONPATH, user site or cwd on sys.path).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    child_env = {k: v for k, v in env.items() if k != "DIST_EXTRA_CONFIG"}
    out = _run([str(py), "-I", "-c", CHILD], env=child_env, cwd=elsewhere).stdout
    got = json.loads(out.strip().splitlines()[-1])

    purelib = Path(got["purelib"]).resolve()
    assert purelib.is_relative_to(target.resolve())
    assert Path(got["package"]).resolve().is_relative_to(purelib), got["package"]
    assert Path(got["data_dir"]).resolve() == purelib / "palette_lens" / "data" / "builtin"
    assert got["heavy"] == [], "the prompt loader and the shipped run's check must need only the standard library"
    shipped = REPO / "palette_lens" / "pipeline" / "builtin_run"
    assert Path(got["builtin_run"]).resolve() == purelib / "palette_lens" / "pipeline" / "builtin_run"
    assert got["builtin_files"] == len(json.loads((shipped / "manifest.json").read_text())["files"])
    assert set(got["counts"]) >= EXPECTED_DOMAINS
    assert got["counts"] == dict(_repo_counts())
    assert got["gate_pool"] == dict(_repo_counts(DATA / "gate"))


def test_builtin_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("PALETTE_LENS_DATA", raising=False)
    checkout = Path(prompts_mod.__file__).resolve().parents[2] / "data"
    packaged = tmp_path / "builtin"
    packaged.mkdir()
    monkeypatch.setattr(prompts_mod, "_packaged_data_dir", lambda: packaged)
    assert prompts_mod.builtin_data_dir() == packaged  # the wheel's copy first
    monkeypatch.setenv("PALETTE_LENS_DATA", str(tmp_path / "mine"))
    assert prompts_mod.builtin_data_dir() == tmp_path / "mine"  # the environment overrides everything
    monkeypatch.delenv("PALETTE_LENS_DATA")
    monkeypatch.setattr(prompts_mod, "_packaged_data_dir", lambda: None)
    assert prompts_mod.builtin_data_dir() == checkout  # a checkout / editable install
    monkeypatch.setattr(prompts_mod, "__file__", str(tmp_path / "a" / "b" / "c" / "prompts.py"))
    with pytest.raises(DataError, match="built-in prompt data is missing.*PALETTE_LENS_DATA"):
        prompts_mod.builtin_data_dir()


def test_editable_checkout_has_no_packaged_copy():
    # In this checkout palette_lens/data/builtin does not exist (setup.py writes it only into build
    # folders), so an editable install reads the repository's data/ folder.
    if Path(prompts_mod.__file__).resolve().is_relative_to(REPO):
        assert prompts_mod._packaged_data_dir() is None
        assert os.environ.get("PALETTE_LENS_DATA") or prompts_mod.builtin_data_dir() == DATA
