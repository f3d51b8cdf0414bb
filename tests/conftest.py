"""Shared fixtures: tiny randomly initialised chat models (no downloads) and the embedded default model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from palette_lens.models.tiny import tiny_chat_model


@pytest.fixture(scope="session")
def tiny_qwen():
    """A 3-layer Qwen2-style chat model with a ChatML template (random weights)."""
    return tiny_chat_model("qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 3-layer Llama-style chat model with a Llama-3 template (random weights)."""
    return tiny_chat_model("llama", seed=1)


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (builds the float cache once: about a minute)."""
    if os.environ.get("PALETTE_LENS_SKIP_INTEGRATION"):
        pytest.skip("PALETTE_LENS_SKIP_INTEGRATION is set")
    from palette_lens.models.loading import load_model

    torch.manual_seed(0)
    return load_model()


@pytest.fixture(scope="session")
def prompts():
    from palette_lens.data.prompts import load_prompts

    return load_prompts()


@pytest.fixture(scope="session")
def quick_demo_dir(tmp_path_factory) -> Path:
    """Output folder of one ``palette-lens demo --quick`` run on the default model (run once per session).

    ``$PALETTE_LENS_QUICK_DEMO_DIR`` pointing at a finished run (it holds ``metrics.json``) reuses it.
    """
    if os.environ.get("PALETTE_LENS_SKIP_INTEGRATION"):
        pytest.skip("PALETTE_LENS_SKIP_INTEGRATION is set")
    given = os.environ.get("PALETTE_LENS_QUICK_DEMO_DIR")
    if given and (Path(given) / "metrics.json").is_file():
        return Path(given)
    out = Path(given) if given else tmp_path_factory.mktemp("demo-quick")
    cmd = [sys.executable, "-m", "palette_lens.cli.app", "demo", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd[2:])}` failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def notebook_runs(default_model, tmp_path_factory) -> dict:
    """All five notebooks executed CI-sized once per session (adapters: the shipped run): name → run.

    ``$PALETTE_LENS_RUN_DIR`` overrides the run folder the notebooks load their adapters from.
    """
    from palette_lens.notebooks import runner as nr

    run_dir = os.environ.get(nr.RUN_DIR_ENV) or None  # None: each notebook's default, run_dir = "builtin"
    out = tmp_path_factory.mktemp("executed")
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    runs = nr.run_notebooks(notebooks, ci=True, run_dir=run_dir, out_dir=out)
    return {Path(r.notebook).stem: r for r in runs}


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (Playwright's sync API allows one instance per thread): the
    browser tests check pages in it, the live notebook tests open their JupyterLab tabs in it. Without Chromium
    the tests that use it skip on a dev machine and fail in CI."""
    from palette_lens.report.browser import HeadlessChromium, browser_available

    reason = browser_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser checks (.ci/run installs Debian's chromium)")
        pytest.skip(reason)
    with HeadlessChromium() as b:
        yield b
