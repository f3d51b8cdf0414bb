"""Regenerate ``tests/data/tiny_run/{metrics,details}.json`` (used by tests/test_browser.py).

They are the output of ``run_pipeline`` on ``tiny_chat_model("qwen2", seed=0)`` with the ``TINY`` config and toy
prompts of tests/test_pipeline.py (about a minute on 2 cores). Run it when ``details.json`` gains keys that
``palette_lens.report.html`` needs::

    .venv/bin/python tests/data/make_tiny_run.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from test_pipeline import _TOPICS, TINY, toy_records

    from palette_lens.data.prompt_set import PromptSet
    from palette_lens.models.tiny import tiny_chat_model
    from palette_lens.pipeline.run import run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        run_pipeline(tiny_chat_model("qwen2", seed=0), PromptSet(toy_records(_TOPICS)), tmp, TINY, progress=False,
                     report=False)
        out = HERE / "tiny_run"
        out.mkdir(exist_ok=True)
        for name in ("metrics.json", "details.json"):
            shutil.copy(Path(tmp) / name, out / name)


if __name__ == "__main__":
    main()
