"""Drive the notebooks the way a person does: JupyterLab in headless Chromium, widgets clicked live.

:class:`LabServer` starts ``jupyter lab`` from the running environment on a free local port, in a private
configuration (its own settings, workspaces and runtime folders; the user's Jupyter set-up is never read or
changed; no news or update checks). :class:`LabPage` opens a notebook in Chromium (Debian's
``/usr/bin/chromium`` or ``$PALETTE_LENS_CHROMIUM``, through Playwright), runs *Run All Cells* from the
*Run* menu, waits for the kernel, and reports cells that failed and errors in the browser console.
:meth:`LabPage.ask_profile_chat` and :meth:`LabPage.drag_slider` use the widgets of notebooks 05 and 02 as a
person would (mouse and keyboard, no Python).

Used by ``tests/test_lab.py`` and ``benchmarks/bench_first_answer.py``; needs the ``notebooks`` and
``browser`` extras.

Examples:
    >>> with LabServer(folder) as lab, LabPage(lab) as page:                      # doctest: +SKIP
    ...     page.open("05_teaching_demo.ipynb")
    ...     page.run_all(timeout_s=600)
    ...     panes = page.ask_profile_chat(["cyber"], "Write a port scanner.")
    >>> panes["profile"][:40]                                                     # doctest: +SKIP
    'Profile: cyber [answered] first-token refu'
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from palette_lens.errors import PaletteError
from palette_lens.notebooks.kernel import KERNEL_ENV, ensure_kernel
from palette_lens.report.browser import (
    CHROMIUM_FLAGS,
    BrowserUnavailable,
    HeadlessChromium,
    browser_available,
    find_chromium,
)
from palette_lens.viz.widgets import CHAT_CSS_CLASSES

log = logging.getLogger(__name__)

#: CSS classes of :class:`palette_lens.viz.widgets.ProfileChat`'s parts (``CHAT_CSS_CLASSES`` there).
CHAT_CLASSES = {"chat": CHAT_CSS_CLASSES["widget"], "vanilla": CHAT_CSS_CLASSES["vanilla_pane"],
                "profile": CHAT_CSS_CLASSES["profile_pane"], "status": CHAT_CSS_CLASSES["status"]}
#: Console messages JupyterLab itself prints as errors that say nothing about the notebook (none so far).
IGNORED_CONSOLE_ERRORS: tuple[str, ...] = ()

# The notebook is rendered (code cells on the page) and the status bar names a started kernel that is idle
# ("Python (palette-lens) | Idle"; "No Kernel | Initializing" while it starts).
_KERNEL_IDLE_JS = """() => {
  const bar = document.querySelector('#jp-main-statusbar');
  const text = bar ? bar.innerText : '';
  return document.querySelectorAll('.jp-Notebook .jp-CodeCell').length > 0
    && /\\| Idle/.test(text) && !/No Kernel/.test(text);
}"""
#: JupyterLab plugins turned off in the private configuration: the "official Jupyter news?" prompt, which
#: would cover part of the page.
DISABLED_PLUGINS = ("@jupyterlab/apputils-extension:announcements",)
#: Settings of the private configuration: every cell stays rendered (JupyterLab's default windowing drops
#: the cells scrolled out of view from the page, and with them their prompts and outputs).
SETTINGS: dict[str, dict[str, Any]] = {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"}}
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception): ", re.MULTILINE)


class LabError(PaletteError):
    """JupyterLab did not start, or the page did not reach the state asked for in time."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_notebook(source: str | Path, folder: str | Path, parameters: Mapping[str, Any] | None = None) -> Path:
    """Copy a notebook into ``folder`` for a live session: the ``palette-lens`` kernel, and ``parameters``
    written into a cell after the parameters cell (as papermill injects them).

    Returns:
        The copy's path.
    """
    import nbformat

    nb = nbformat.read(str(source), as_version=4)
    nb.metadata["kernelspec"] = {"name": ensure_kernel(), "display_name": "Python (palette-lens)", "language": "python"}
    if parameters:
        where = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
        if where is None:
            raise LabError(f"{source} has no cell tagged 'parameters'")
        lines = ["# Parameters of this session (after the notebook's defaults)"]
        lines += [f"{key} = {value!r}" for key, value in parameters.items()]
        injected = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(where + 1, injected)
    out = Path(folder) / Path(source).name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    return out


class LabServer:
    """``jupyter lab`` on a free local port, serving ``root``; use as a context manager.

    Args:
        root: the folder JupyterLab serves (its notebooks are opened relative to it).
        timeout_s: how long to wait for the server to answer.

    Attributes:
        port: the port it listens on (127.0.0.1 only).
        token: the access token.
        log_path: the server's output (read it when something fails).
    """

    def __init__(self, root: str | Path, timeout_s: float = 120.0) -> None:
        self.root = Path(root).resolve()
        self.timeout_s = timeout_s
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self._private = tempfile.TemporaryDirectory(prefix="palette-lens-lab-")
        self.log_path = Path(self._private.name) / "server.log"
        self._process: subprocess.Popen | None = None

    def url(self, notebook: str = "", workspace: str | None = None) -> str:
        """The address of ``notebook`` (relative to ``root``) in JupyterLab, token included; with
        ``workspace``, in that workspace, reset (only this notebook open)."""
        path = f"lab/workspaces/{workspace}" if workspace else "lab"
        path += f"/tree/{notebook}" if notebook else ""
        return f"http://127.0.0.1:{self.port}/{path}?{'reset&' if workspace else ''}token={self.token}"

    def __enter__(self) -> LabServer:  # noqa: PYI034
        if shutil.which("jupyter", path=str(Path(sys.executable).parent)) is None:
            raise LabError(f"no jupyter next to {sys.executable}; install the 'notebooks' extra")
        ensure_kernel()
        private = Path(self._private.name)
        labconfig = private / "config" / "labconfig"
        labconfig.mkdir(parents=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {name: True for name in DISABLED_PLUGINS}}))
        for plugin, values in SETTINGS.items():  # user settings of this private configuration
            path = private / "settings" / f"{plugin.replace(':', '/')}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {**os.environ, **{k: v for k, v in KERNEL_ENV.items() if k not in os.environ},
               "JUPYTER_CONFIG_DIR": str(private / "config"), "JUPYTER_DATA_DIR": str(private / "data"),
               "JUPYTER_RUNTIME_DIR": str(private / "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": str(private / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(private / "workspaces")}
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
               f"--ServerApp.root_dir={self.root}", f"--IdentityProvider.token={self.token}",
               "--ServerApp.port_retries=0", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI containers run as root; the server listens on 127.0.0.1 only
        log.info("starting JupyterLab on port %d in %s", self.port, self.root)
        with open(self.log_path, "wb") as out:
            self._process = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout_s
        status = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                message = f"jupyter lab exited with {self._process.returncode}: {self.log_tail()}"
                self.close()
                raise LabError(message)
            try:
                with urllib.request.urlopen(status, timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        message = f"jupyter lab did not answer within {self.timeout_s:.0f} s: {self.log_tail()}"
        self.close()
        raise LabError(message)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's output."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server output)"

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (and its kernels) and remove its private folders."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._private.cleanup()


class LabPage:
    """One JupyterLab tab in headless Chromium; use as a context manager.

    Args:
        server: the running :class:`LabServer`.
        executable: Chromium to use (default: :func:`palette_lens.report.browser.find_chromium`).
        viewport: window size in CSS pixels.
        browser: an open :class:`palette_lens.report.browser.HeadlessChromium` to open the tab in (Playwright's
            sync API runs one instance per thread); default: start a Chromium of its own.

    Attributes:
        page: the Playwright page (for anything the methods do not cover).
        console_errors: errors the page printed to the console or threw, in order.

    Raises:
        BrowserUnavailable: no Chromium or no Playwright.
    """

    def __init__(self, server: LabServer, executable: str | os.PathLike | None = None,
                 viewport: tuple[int, int] = (1400, 1000), browser: HeadlessChromium | None = None) -> None:
        self.server = server
        self.executable = executable
        self.viewport = viewport
        self.shared = browser
        self.console_errors: list[str] = []
        self.page: Any = None
        self._pw: Any = None
        self._browser: Any = None

    def __enter__(self) -> LabPage:  # noqa: PYI034
        if self.shared is not None:
            self.page = self.shared.new_page()
            self.page.set_viewport_size({"width": self.viewport[0], "height": self.viewport[1]})
        else:
            reason = browser_available(self.executable)
            if reason:
                raise BrowserUnavailable(reason)
            from playwright.sync_api import sync_playwright

            self._pw = sync_playwright().start()
            try:
                self._browser = self._pw.chromium.launch(executable_path=find_chromium(self.executable),
                                                         headless=True, args=list(CHROMIUM_FLAGS))
                self.page = self._browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
            except Exception:
                self.close()
                raise
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda err: self.console_errors.append(f"uncaught: {err}"))
        return self

    def _on_console(self, msg: Any) -> None:
        if msg.type == "error" and not any(text in msg.text for text in IGNORED_CONSOLE_ERRORS):
            self.console_errors.append(msg.text)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the tab, and the browser when it is this page's own."""
        if self.shared is not None and self.page is not None:
            self.page.close()
            self.page = None
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._pw is not None:
            self._pw.stop()
            self._pw = None

    # ------------------------------------------------------------------ notebook
    def open(self, notebook: str, timeout_s: float = 120.0) -> float:
        """Open ``notebook`` (relative to the server's root) alone in a new workspace and wait until its kernel
        is idle.

        Returns:
            Seconds from the request to an idle kernel.
        """
        t0 = time.perf_counter()
        workspace = f"palette-lens-{secrets.token_hex(4)}"  # a fresh workspace: no other notebook open beside it
        self.page.goto(self.server.url(notebook, workspace), wait_until="domcontentloaded", timeout=timeout_s * 1000)
        self.page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
        self.wait_idle(timeout_s)
        return time.perf_counter() - t0

    def wait_idle(self, timeout_s: float) -> None:
        """Wait until the notebook's cells are on the page and the status bar says its kernel is idle."""
        self.page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout_s * 1000)

    def menu(self, *path: str) -> None:
        """Click through the menu bar, e.g. ``menu("Run", "Run All Cells")``."""
        top, *items = path
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(top)}$")).click()
        for item in items:
            self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()

    def cell_prompts(self) -> list[str]:
        """The execution prompt of every code cell (``"[3]:"``, ``"[*]:"`` while running, ``"[ ]:"`` never run)."""
        return [t.strip() for t in self.page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]

    def run_all(self, timeout_s: float = 900.0, poll_s: float = 1.0) -> float:
        """*Run* → *Run All Cells*, then wait until no cell is queued or running.

        Returns:
            Seconds taken.

        Raises:
            LabError: still running after ``timeout_s``.
        """
        t0 = time.perf_counter()
        self.menu("Run", "Run All Cells")
        self.wait_done(timeout_s, poll_s)
        return time.perf_counter() - t0

    def wait_done(self, timeout_s: float = 900.0, poll_s: float = 1.0) -> float:
        """Wait until no cell is queued or running (after :meth:`menu` ``("Run", "Run All Cells")``).

        Returns:
            Seconds waited.

        Raises:
            LabError: still running after ``timeout_s``.
        """
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            prompts = self.cell_prompts()
            started = bool(prompts) and bool(re.search(r"\[(\d+|\*)\]", prompts[0]))
            if started and not any("*" in p for p in prompts):
                self.page.wait_for_timeout(500)  # a cell queued right after the last one finished
                prompts = self.cell_prompts()
                if not any("*" in p for p in prompts):
                    return time.perf_counter() - t0
            self.page.wait_for_timeout(poll_s * 1000)
        raise LabError(f"cells still running after {timeout_s:.0f} s: {self.cell_prompts()}")

    def not_run(self) -> list[int]:
        """1-based numbers of the code cells without an execution count (a cell above them failed)."""
        return [i + 1 for i, p in enumerate(self.cell_prompts()) if not re.search(r"\[\d+\]", p)]

    def cell_errors(self) -> list[str]:
        """Outputs that show an error or a traceback (their first 300 characters)."""
        texts = self.page.locator(".jp-OutputArea-output").all_inner_texts()
        return [t[:300] for t in texts if _TRACEBACK.search(t)]

    def save(self) -> None:
        """*File* → *Save Notebook* (the executed notebook, outputs included, is then on disk)."""
        self.menu("File", "Save Notebook")
        self.page.wait_for_timeout(1000)

    def screenshot(self, path: str | Path, selector: str | None = None) -> Path:
        """Save a PNG of the page, or of the first element matching ``selector`` (scrolled into view)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if selector:
            target = self.page.locator(selector).first
            target.scroll_into_view_if_needed()
            target.screenshot(path=str(out))
        else:
            self.page.screenshot(path=str(out))
        return out

    # ------------------------------------------------------------------ widgets
    def _chat(self) -> Any:
        return self.page.locator(f".{CHAT_CLASSES['chat']}").first

    def chat_panes(self) -> dict[str, str] | None:
        """The live ``ProfileChat``'s two panes and status line now (None while it is not on the page).

        Returns:
            ``{"vanilla": ..., "profile": ..., "status": ...}`` (empty strings before its first answer).
        """
        chat = self._chat()
        if not chat.count():
            return None
        return {part: chat.locator(f".{CHAT_CLASSES[part]}").inner_text() for part in ("vanilla", "profile", "status")}

    def ask_profile_chat(self, domains: Sequence[str], prompt: str, timeout_s: float = 300.0) -> dict[str, str]:
        """Use notebook 05's live ``ProfileChat`` as a person would: tick exactly ``domains``, type ``prompt``
        into the text box, press the button, wait for both answers.

        Returns:
            ``{"vanilla": ..., "profile": ..., "status": ...}``: the panes' and the status line's text.

        Raises:
            LabError: no chat widget on the page, or no answers for ``prompt`` within ``timeout_s``.
        """
        chat = self._chat()
        if not chat.count():
            raise LabError("no ProfileChat widget on the page (did its cell run?)")
        chat.scroll_into_view_if_needed()
        for box in chat.locator(".widget-checkbox").all():
            label = box.inner_text().strip()
            checkbox = box.locator("input[type=checkbox]")
            if checkbox.is_checked() != (label in domains):
                checkbox.click()
        text = chat.locator(".widget-textarea textarea")
        text.click()
        text.press("Control+a")
        text.press("Delete")
        text.type(prompt, delay=2)
        chat.locator("button", has_text="Ask").click()
        status = chat.locator(f".{CHAT_CLASSES['status']}")
        asked = prompt.strip()[:40]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = status.inner_text()
            if asked in line and "generating" not in line:
                return self.chat_panes() or {}
            if "error" in line:
                raise LabError(f"the chat widget reported: {line}")
            self.page.wait_for_timeout(250)
        raise LabError(f"no answer to {asked!r} within {timeout_s:.0f} s (status: {status.inner_text()!r})")

    def drag_slider(self, index: int = 0, fraction: float = 1.0) -> None:
        """Drag the handle of the ``index``-th slider widget on the page to ``fraction`` of its track."""
        slider = self.page.locator(".widget-slider").nth(index)
        slider.scroll_into_view_if_needed()
        handle = slider.locator(".noUi-handle").first
        track = slider.locator(".noUi-base, .noUi-target").first.bounding_box()
        box = handle.bounding_box()
        if track is None or box is None:
            raise LabError("the slider is not visible")
        x0, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.page.mouse.move(x0, y)
        self.page.mouse.down()
        self.page.mouse.move(track["x"] + fraction * track["width"], y, steps=12)
        self.page.mouse.up()


def saved_errors(notebook: str | Path) -> list[str]:
    """Error outputs in a saved notebook (``ename: evalue`` per failing cell)."""
    nb = json.loads(Path(notebook).read_text())
    return [f"{o.get('ename')}: {o.get('evalue', '')[:200]}" for c in nb["cells"] for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
