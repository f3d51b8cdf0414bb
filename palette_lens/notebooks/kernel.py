"""The Jupyter kernel the notebook runner starts notebooks in: its spec and the environment it gets.

The ``palette-lens`` kernel spec points at the Python that runs the runner; it is written into that
environment's ``share/jupyter/kernels`` when missing (the user's own Jupyter configuration is never touched).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KERNEL_NAME = "palette-lens"
#: Environment given to the kernels unless already set. With OpenMP's default (active) waiting, torch's
#: threads spin while they wait for each other; on a machine whose cores are shared with other jobs that
#: made greedy generation of the default model ~12× slower (95 s instead of 7.7 s for 4 prompts × 16
#: tokens on 2 busy cores). Passive waiting costs nothing measurable on an idle machine.
#: PLOTLY_RENDERER: figures are stored both as plotly's mime bundle (JupyterLab) and as self-contained HTML
#: (plotly.js inlined once), so an nbconvert HTML export of an executed notebook shows them too.
KERNEL_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "PLOTLY_RENDERER": "plotly_mimetype+notebook"}


def kernel_spec_dir(prefix: str | Path | None = None) -> Path:
    """Where the runner's kernel spec lives: ``<prefix>/share/jupyter/kernels/palette-lens``."""
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def kernel_spec(python: str | None = None) -> dict[str, Any]:
    """The kernel spec of this environment's Python (an absolute path: no PATH lookup at start-up)."""
    return {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (palette-lens)",
        "language": "python",
        "metadata": {"debugger": True},
    }


def ensure_kernel(prefix: str | Path | None = None) -> str:
    """Write the ``palette-lens`` kernel spec into the running environment when missing or stale.

    When that environment is not writable, the spec goes into a private folder that only this process
    adds to ``JUPYTER_PATH`` (no global Jupyter configuration is changed).

    Returns:
        the kernel name to pass to papermill.
    """
    spec = kernel_spec()
    folder = kernel_spec_dir(prefix)
    try:
        _write_spec(folder, spec)
    except OSError:
        import tempfile

        private = Path(tempfile.gettempdir()) / f"palette-lens-jupyter-{os.getuid() if hasattr(os, 'getuid') else 0}"
        _write_spec(private / "kernels" / KERNEL_NAME, spec)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(private), os.environ.get("JUPYTER_PATH")]))
        log.info("kernel spec written to %s (environment not writable)", private)
    return KERNEL_NAME


def _write_spec(folder: Path, spec: dict[str, Any]) -> None:
    path = folder / "kernel.json"
    if path.is_file():
        try:
            if json.loads(path.read_text()).get("argv") == spec["argv"]:
                return
        except (OSError, ValueError):
            pass
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1))
