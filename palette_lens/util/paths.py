"""Where palette-lens keeps its caches (models, activations)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Return the user cache folder (``$PALETTE_LENS_CACHE`` or ``~/.cache/palette-lens``)."""
    env = os.environ.get("PALETTE_LENS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "palette-lens"
