"""The notebooks opened the way a person opens them: JupyterLab in headless Chromium, widgets used live.

JupyterLab runs from this environment (:class:`palette_lens.notebooks.lab.LabServer`, a private configuration
on a free port); Chromium is Debian's ``/usr/bin/chromium`` (``.ci/run`` installs it). Each notebook is
copied with its CI-sized parameters written in (as papermill injects them), run with *Run* → *Run All
Cells*, then its widget is used with the mouse and keyboard. The tabs open in the session's Chromium (the
``browser`` fixture of conftest.py). Without Chromium these tests skip on a dev machine and fail in CI. Screenshots go to ``$PALETTE_LENS_SCREENSHOT_DIR`` when set (the README's picture
comes from there), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from palette_lens.notebooks import runner as nr
from palette_lens.notebooks.lab import LabPage, LabServer, prepare_notebook, saved_errors

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TEACHING, SEPARATION = "05_teaching_demo.ipynb", "02_domain_separation.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, default_model, browser):  # default_model: its float cache exists before the kernels start
    root = tmp_path_factory.mktemp("lab")
    for name in (TEACHING, SEPARATION):
        prepare_notebook(ROOT / "notebooks" / name, root, nr.CI_PARAMETERS[name[:2]])
    with LabServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    given = os.environ.get("PALETTE_LENS_SCREENSHOT_DIR")
    return Path(given) if given else tmp_path_factory.mktemp("screenshots")


def run_all_cleanly(page: LabPage, lab: LabServer, name: str) -> None:
    page.open(name)
    page.run_all(timeout_s=1200)
    assert not page.not_run(), f"cells {page.not_run()} of {name} never ran: a cell above them failed"
    assert not page.cell_errors(), page.cell_errors()
    page.save()
    assert not saved_errors(lab.root / name)


def test_teaching_demo_runs_live_and_answers_a_typed_prompt(lab, browser, shots, prompts):
    # a cyber test prompt the notebook's guided run did not use (it picks among the first n_candidates)
    typed = prompts.part("cyber", "test")[nr.CI_PARAMETERS["05"]["n_candidates"] + 1]
    with LabPage(lab, browser=browser) as page:
        run_all_cleanly(page, lab, TEACHING)
        panes = page.ask_profile_chat(["cyber"], typed)
        page.screenshot(shots / "teaching_demo_chat.png", ".palette-lens-chat")
        page.screenshot(shots / "teaching_demo_lab.png")
        errors = list(page.console_errors)
    assert typed[:40] in panes["status"]
    assert panes["vanilla"].startswith("Vanilla model") and panes["profile"].startswith("Profile: cyber")
    for pane in (panes["vanilla"], panes["profile"]):
        header, _, answer = pane.partition("\n")
        assert re.search(r"\[(answered|refused)\] first-token refusal mass \d\.\d\d", header), header
        assert len(answer.strip()) >= 5, f"no answer text in the pane: {pane!r}"
    assert not errors, errors
    assert (shots / "teaching_demo_chat.png").stat().st_size > 10_000


def test_layer_slider_dragged_live_changes_the_figure(lab, browser, shots):
    with LabPage(lab, browser=browser) as page:
        run_all_cleanly(page, lab, SEPARATION)
        explorer = page.page.locator(".jp-OutputArea-output:has(.widget-slider)").last
        title = explorer.locator(".gtitle").first
        title.wait_for(timeout=120_000)  # plotly draws the FigureWidget after the cell has finished
        readout = explorer.locator(".widget-readout").first
        before, layer_before = title.text_content(), readout.inner_text()
        assert before and "layer" in before
        page.drag_slider(index=0, fraction=0.0)
        page.page.wait_for_function(
            "([el, old]) => el.textContent !== old", arg=[title.element_handle(), before], timeout=120_000)
        after, layer_after = title.text_content(), readout.inner_text()
        assert layer_after != layer_before and f"layer {layer_after.strip()}," in after, (layer_after, after)
        page.drag_slider(index=0, fraction=0.75)  # and on to a layer where the domains have separated
        page.page.wait_for_function(
            "([el, old]) => el.textContent !== old", arg=[title.element_handle(), after], timeout=120_000)
        assert f"layer {readout.inner_text().strip()}," in title.text_content()
        page.screenshot(shots / "layer_explorer.png", ".jp-OutputArea-output:has(.widget-slider)")
        errors = list(page.console_errors)
    assert not errors, errors
