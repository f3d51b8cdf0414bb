"""Time to first answer in JupyterLab: open notebook 05, Run All, until the chat widget shows two answers.

Side by side in one run, on the embedded default model (its float cache warm), in headless Chromium through
JupyterLab's own interface (:mod:`palette_lens.notebooks.lab`), with the notebook's own (user-sized)
parameters:

- ``shipped``: ``run_dir = "builtin"`` (the default): the adapters shipped with palette-lens;
- ``baking``: ``run_dir = ""``: the notebook bakes its two small adapters first (what it did before).

For each: seconds until the kernel is idle after opening, until the widget's two panes first show answers
(the guided run's first question), until every cell has run, and for a question typed into the widget
afterwards. Writes ``benchmarks/results/first_answer.json``.

Usage: ``python benchmarks/bench_first_answer.py [--modes shipped baking]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from palette_lens.data.prompts import load_prompts
from palette_lens.models.loading import load_model
from palette_lens.notebooks.lab import LabPage, LabServer, prepare_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_teaching_demo.ipynb"
OUT = Path(__file__).resolve().parent / "results" / "first_answer.json"
MODES = {"shipped": {}, "baking": {"run_dir": ""}}


def measure(mode: str, typed: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-first-answer-") as tmp:
        prepare_notebook(NOTEBOOK, tmp, MODES[mode])
        with LabServer(tmp) as lab, LabPage(lab) as page:
            t0 = time.perf_counter()
            page.open(NOTEBOOK.name)
            opened = time.perf_counter() - t0
            page.menu("Run", "Run All Cells")
            first = None
            while first is None:
                panes = page.chat_panes()
                if panes and panes["vanilla"].strip() and panes["profile"].strip():
                    first = time.perf_counter() - t0
                elif time.perf_counter() - t0 > 1800:
                    raise TimeoutError(f"{mode}: no answer in the widget after 30 minutes")
                else:
                    page.page.wait_for_timeout(200)
            page.wait_done(timeout_s=1800)
            all_cells = time.perf_counter() - t0
            errors = page.cell_errors() + page.console_errors
            t1 = time.perf_counter()
            page.ask_profile_chat(["cyber"], typed)
            typed_s = time.perf_counter() - t1
    return {"open_s": round(opened, 1), "first_answer_s": round(first, 1), "all_cells_s": round(all_cells, 1),
            "typed_question_s": round(typed_s, 1), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    args = ap.parse_args(argv)
    load_model()  # the float cache is built once here, not inside the first measured kernel
    typed = load_prompts().part("cyber", "test")[9]
    results = {}
    for mode in args.modes:
        results[mode] = measure(mode, typed)
        print(mode, results[mode], flush=True)
    doc = {"results": results, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
           "command": "python benchmarks/bench_first_answer.py"}
    if {"shipped", "baking"} <= set(results):
        doc["first_answer_ratio_baking_over_shipped"] = round(
            results["baking"]["first_answer_s"] / results["shipped"]["first_answer_s"], 2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
