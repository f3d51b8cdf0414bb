"""Open a local HTML page (a ``report.html``, a notebook exported to HTML) in headless Chromium and check it.

:func:`check_page` loads the page, collects JavaScript errors (uncaught exceptions and ``console.error``
messages), counts the plotly figures and how many of them actually drew, and can save a PNG screenshot.
Nothing is fetched from the network unless ``allow_network=True``: requests to ``http(s)``/``ws(s)``
addresses are blocked and listed, so a page that is not self-contained shows up in
:attr:`PageCheck.blocked_requests` (and its figures fail to draw if plotly.js was among them).

The browser is driven by Playwright (``pip install 'palette-lens[browser]'``) but it uses a Chromium that is
already installed (Debian's ``chromium`` package: ``/usr/bin/chromium``; ``$PALETTE_LENS_CHROMIUM`` points
elsewhere); ``playwright install`` is not needed. Each :class:`HeadlessChromium` starts one browser with a
new empty profile (``--user-data-dir`` in a temporary folder) and the flags of :data:`CHROMIUM_FLAGS`.

Command line: ``python -m palette_lens.report.browser PAGE.html [--screenshot OUT.png]`` prints the result and
exits with 1 when the page has errors or figures that did not draw.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palette_lens.errors import PaletteError

log = logging.getLogger(__name__)

#: Flags every launch uses: headless, no sandbox (CI runs as root), and no background traffic (no
#: component updates, sync, QUIC or first-run pages), so the browser never reaches for the network itself.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_NETWORK_SCHEMES = ("http:", "https:", "ws:", "wss:")

# Every plotly figure on the page: divs written by plotly's ``to_html`` (class ``plotly-graph-div``) and
# divs plotly.js has drawn into (class ``js-plotly-plot``). A figure counts as rendered when plotly.js drew
# into it (``js-plotly-plot``, ``_fullLayout`` set) and its ``.main-svg`` has a non-zero size on screen.
_FIGURES_JS = """
() => {
  const divs = new Set(document.querySelectorAll('div.plotly-graph-div, div.js-plotly-plot'));
  return Array.from(divs).map((d) => {
    const svg = d.querySelector('svg.main-svg');
    const box = svg ? svg.getBoundingClientRect() : null;
    const plotted = d.classList.contains('js-plotly-plot') && !!d._fullLayout;
    const width = box ? box.width : 0, height = box ? box.height : 0;
    return {id: d.id || '', plotted: plotted, width: width, height: height,
            traces: (d._fullData || []).length, rendered: plotted && width > 0 && height > 0};
  });
}
"""
# True once every plotly div on the page has been drawn into (or there is none).
_ALL_DRAWN_JS = """
() => Array.from(document.querySelectorAll('div.plotly-graph-div'))
  .every((d) => d.classList.contains('js-plotly-plot') && d.querySelector('svg.main-svg'))
"""


class BrowserUnavailable(PaletteError):
    """No Chromium executable, or the ``playwright`` package is not installed."""


@dataclass
class Figure:
    """One plotly figure on the page."""

    id: str
    plotted: bool  # plotly.js drew into the div
    width: float  # size of its main SVG on the page (CSS pixels)
    height: float
    traces: int
    rendered: bool  # plotted and visible with a non-zero size


@dataclass
class PageCheck:
    """What :func:`check_page` saw on one page."""

    url: str
    js_errors: list[str] = field(default_factory=list)  # uncaught exceptions and console.error messages
    blocked_requests: list[str] = field(default_factory=list)  # network addresses the page asked for
    failed_requests: list[str] = field(default_factory=list)  # other loads that failed (missing local files)
    figures: list[Figure] = field(default_factory=list)
    screenshot: Path | None = None
    seconds: float = 0.0  # load, wait for the figures, inspect, screenshot

    @property
    def n_figures(self) -> int:
        return len(self.figures)

    @property
    def n_rendered(self) -> int:
        return sum(f.rendered for f in self.figures)

    @property
    def not_rendered(self) -> list[str]:
        return [f.id or f"#{i}" for i, f in enumerate(self.figures) if not f.rendered]

    @property
    def ok(self) -> bool:
        """No JavaScript errors and every plotly figure rendered (blocked requests alone do not fail it)."""
        return not self.js_errors and self.n_rendered == self.n_figures

    def summary(self) -> str:
        """A few lines for logs and assertion messages."""
        lines = [(f"{self.url}: {self.n_rendered}/{self.n_figures} plotly figures rendered, "
                  f"{len(self.js_errors)} JavaScript errors, {len(self.blocked_requests)} blocked network requests "
                  f"({self.seconds:.1f} s)")]
        lines += [f"  JS error: {e}" for e in self.js_errors]
        lines += [f"  not rendered: {f}" for f in self.not_rendered]
        lines += [f"  blocked: {u}" for u in self.blocked_requests]
        lines += [f"  failed: {u}" for u in self.failed_requests]
        return "\n".join(lines)


def find_chromium(executable: str | os.PathLike | None = None) -> str | None:
    """Path of a Chromium executable: ``executable`` or ``$PALETTE_LENS_CHROMIUM`` when given (None if it does
    not exist), else ``/usr/bin/chromium`` or one on ``PATH``; None when there is none."""
    explicit = executable or os.environ.get("PALETTE_LENS_CHROMIUM")
    if explicit:
        return shutil.which(str(explicit))
    for cand in _CANDIDATES:
        path = shutil.which(cand)
        if path:
            return path
    return None


def browser_available(executable: str | os.PathLike | None = None) -> str | None:
    """Why a browser check cannot run here (no Chromium, no playwright), or None when it can."""
    if find_chromium(executable) is None:
        return "no Chromium found (install Debian's 'chromium' package or set PALETTE_LENS_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' package is not installed (pip install 'palette-lens[browser]')"
    return None


class HeadlessChromium:
    """One headless Chromium (new empty profile) for checking several pages; use as a context manager.

    Plotly draws while the page's inline scripts run, so a figure not drawn ``draw_timeout_s`` after the load
    event counts as not rendered. ``timeout_s`` bounds the launch and the page load.

    ``with HeadlessChromium() as b: r = b.check("report.html", screenshot="report.png")``
    """

    def __init__(self, executable: str | os.PathLike | None = None, viewport: tuple[int, int] = (1280, 900),
                 allow_network: bool = False, timeout_s: float = 60.0, draw_timeout_s: float = 3.0) -> None:
        self.executable = executable
        self.draw_timeout_s = draw_timeout_s
        self.viewport = viewport
        self.allow_network = allow_network
        self.timeout_s = timeout_s
        self._pw: Any = None
        self._context: Any = None
        self._profile: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> HeadlessChromium:  # noqa: PYI034 (typing.Self needs Python 3.11)
        reason = browser_available(self.executable)
        if reason:
            raise BrowserUnavailable(reason)
        from playwright.sync_api import sync_playwright

        exe = find_chromium(self.executable)
        self._profile = tempfile.TemporaryDirectory(prefix="palette-lens-chromium-")
        self._pw = sync_playwright().start()
        try:
            self._context = self._pw.chromium.launch_persistent_context(
                self._profile.name, executable_path=exe, headless=True, args=list(CHROMIUM_FLAGS),
                viewport={"width": self.viewport[0], "height": self.viewport[1]}, timeout=self.timeout_s * 1000,
            )
        except Exception:
            self.close()
            raise
        log.debug("started %s (Chromium %s)", exe, self._context.browser.version if self._context.browser else "?")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the browser and remove its profile folder."""
        if self._context is not None:
            self._context.close()
            self._context = None
        if self._pw is not None:
            self._pw.stop()
            self._pw = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def new_page(self) -> Any:
        """A new Playwright page (tab) in this browser, for pages :meth:`check` does not cover (close it after).

        Playwright's sync API allows one running instance per thread, so code that needs a page while this
        browser is open takes it from here.
        """
        if self._context is None:
            raise RuntimeError("use HeadlessChromium as a context manager")
        return self._context.new_page()

    def check(self, page_path: str | os.PathLike, screenshot: str | os.PathLike | None = None,
              settle_ms: int = 300, max_height: int | None = None) -> PageCheck:
        """Load ``page_path`` (a local file), wait for its plotly figures, inspect it and optionally save a
        full-page PNG to ``screenshot`` (cut at ``max_height`` CSS pixels when given)."""
        if self._context is None:
            raise RuntimeError("use HeadlessChromium as a context manager")
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        path = Path(page_path).resolve()
        if not path.is_file():
            raise FileNotFoundError(path)
        res = PageCheck(url=path.as_uri())
        t0 = time.perf_counter()
        page = self._context.new_page()
        page.set_default_timeout(self.timeout_s * 1000)
        page.on("pageerror", lambda err: res.js_errors.append(f"uncaught: {err}"))

        def on_console(msg: Any) -> None:
            if msg.type != "error":
                return
            if msg.text.startswith("Failed to load resource"):  # reported by "requestfailed" with its address
                return
            where = msg.location or {}
            res.js_errors.append(f"console.error: {msg.text}"
                                 + (f" ({where.get('url', '')[:80]}:{where.get('lineNumber')})" if where else ""))

        def on_failed(req: Any) -> None:
            if req.url not in res.blocked_requests:
                res.failed_requests.append(f"{req.url[:200]} ({req.failure})")

        def route(r: Any) -> None:
            url = r.request.url
            if url.startswith(_NETWORK_SCHEMES):
                res.blocked_requests.append(url)
                r.abort("blockedbyclient")
            else:
                r.continue_()

        page.on("console", on_console)
        page.on("requestfailed", on_failed)
        if not self.allow_network:
            page.route("**/*", route)
        try:
            page.goto(res.url, wait_until="load")
            try:
                page.wait_for_function(_ALL_DRAWN_JS, timeout=self.draw_timeout_s * 1000)
            except PlaywrightTimeout:  # report what is there instead of raising
                log.debug("not every plotly figure drew %.0f s after the load event: %s", self.draw_timeout_s, path)
            page.wait_for_timeout(settle_ms)  # late errors, plotly's second layout pass
            res.figures = [Figure(**f) for f in page.evaluate(_FIGURES_JS)]
            if screenshot is not None:
                out = Path(screenshot)
                out.parent.mkdir(parents=True, exist_ok=True)
                clip = None
                if max_height is not None:
                    h = page.evaluate("() => document.documentElement.scrollHeight")
                    if h > max_height:
                        clip = {"x": 0, "y": 0, "width": self.viewport[0], "height": max_height}
                page.screenshot(path=str(out), full_page=True, clip=clip)
                res.screenshot = out
        finally:
            page.close()
        res.seconds = time.perf_counter() - t0
        log.info("%s", res.summary())
        return res


def check_page(page_path: str | os.PathLike, screenshot: str | os.PathLike | None = None,
               executable: str | os.PathLike | None = None, allow_network: bool = False,
               max_height: int | None = None) -> PageCheck:
    """Check one page in a fresh headless Chromium; see :meth:`HeadlessChromium.check`."""
    with HeadlessChromium(executable, allow_network=allow_network) as browser:
        return browser.check(page_path, screenshot, max_height=max_height)


def export_notebook_html(notebook: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export an executed ``.ipynb`` to HTML with nbconvert (lab template, outputs as saved; nothing runs)."""
    import nbformat
    from nbconvert import HTMLExporter

    from palette_lens.util.atomic import atomic_write_text

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    return atomic_write_text(out, body)


def count_plotly_outputs(notebook: str | os.PathLike) -> int:
    """How many cell outputs of a saved notebook are plotly figures (``application/vnd.plotly.v1+json``)."""
    import json

    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    return sum("application/vnd.plotly.v1+json" in out.get("data", {})
               for cell in nb.get("cells", []) if cell.get("cell_type") == "code" for out in cell.get("outputs", []))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m palette_lens.report.browser PAGE ... [--screenshot PNG]``: 0 when every page passes."""
    ap = argparse.ArgumentParser(prog="python -m palette_lens.report.browser", description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+", help="local .html files (an .ipynb is exported to HTML first)")
    ap.add_argument("--screenshot", action="append", default=[], help="PNG path, one per page, in order")
    ap.add_argument("--chromium", help="Chromium executable (default: /usr/bin/chromium or PATH)")
    ap.add_argument("--allow-network", action="store_true", help="let the page fetch from the network")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    shots: list[str | None] = [*args.screenshot, *[None] * len(args.pages)]
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp, HeadlessChromium(args.chromium,
                                                                    allow_network=args.allow_network) as b:
            for i, p in enumerate(args.pages):
                page = Path(p)
                if page.suffix == ".ipynb":
                    page = export_notebook_html(page, Path(tmp) / f"{page.stem}.html")
                res = b.check(page, shots[i])
                ok &= res.ok
                sys.stdout.write(("PASS " if res.ok else "FAIL ") + res.summary() + "\n")
    except BrowserUnavailable as e:
        sys.stderr.write(f"palette-lens: {e}\n")
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
