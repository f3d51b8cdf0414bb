"""Regenerate ``docs/report.png`` and ``docs/notebook.png`` in headless Chromium (see palette_lens.report.browser).

    .venv/bin/python docs/screenshots.py --report runs/demo-quick/report.html \\
        --notebook notebooks/_executed/SOME_NOTEBOOK.ipynb

``--report`` defaults to ``runs/demo-quick/report.html`` (``make demo-quick``); ``--notebook`` (an executed
``.ipynb``, exported with nbconvert first, or an ``.html`` export) defaults to the first notebook with plotly
figures in ``notebooks/_executed/`` (``make notebooks``). Each page is checked as the tests check it; the
script exits with 1, after writing the screenshots, when a page has JavaScript errors or undrawn figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from palette_lens.report.browser import HeadlessChromium, count_plotly_outputs, export_notebook_html

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("screenshots")


def default_notebook() -> Path | None:
    """The first executed notebook with plotly figures, or None."""
    folder = ROOT / "notebooks" / "_executed"
    found = [p for p in sorted(folder.glob("*.ipynb")) if count_plotly_outputs(p)] if folder.is_dir() else []
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, default=ROOT / "runs" / "demo-quick" / "report.html")
    ap.add_argument("--notebook", type=Path, default=None, help="executed .ipynb or its .html export")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for report.png and notebook.png")
    ap.add_argument("--max-height", type=int, default=5000, help="cut screenshots at this many CSS pixels")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    notebook = args.notebook or default_notebook()
    pages = {"report": args.report}
    if notebook is None:
        log.warning("no executed notebook with plotly figures in notebooks/_executed (run `make notebooks`)")
    else:
        pages["notebook"] = notebook
    ok = True
    with tempfile.TemporaryDirectory() as tmp, HeadlessChromium() as browser:
        for name, page in pages.items():
            if page.suffix == ".ipynb":
                page = export_notebook_html(page, Path(tmp) / f"{page.stem}.html")
            res = browser.check(page, screenshot=args.out / f"{name}.png", max_height=args.max_height)
            ok &= res.ok and res.n_figures > 0
            log.info("%s: %s -> %s", name, "ok" if res.ok else "FAIL", res.screenshot)  # summary logged above
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
