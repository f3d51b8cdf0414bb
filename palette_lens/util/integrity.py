"""Content hashes for files palette-lens writes and reads back: adapters and on-disk caches.

Caches are safetensors files whose metadata carries a sha256 of their tensors and metadata
(:func:`save_checked` / :func:`load_checked`); a file that is unreadable, truncated or altered is
reported as missing (and then rebuilt by its caller), never trusted. Only safetensors and JSON are
read: no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from palette_lens.util.atomic import atomic_write

log = logging.getLogger(__name__)

_HASH_KEY = "palette_lens_sha256"


def tensors_sha256(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes (sorted by name), and the metadata."""
    digest = hashlib.sha256(json.dumps(dict(metadata or {}), sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checked(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a safetensors file atomically, with a sha256 of its content in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta[_HASH_KEY] = tensors_sha256(tensors, meta)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checked(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """Read a :func:`save_checked` file: (tensors, metadata), or None when it is unreadable or altered."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # noqa: BLE001 - any failure to read means a damaged file
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("cache file %s is unreadable (%s); it will be rebuilt", path, reason)
        return None
    expected = meta.pop(_HASH_KEY, None)
    if expected is None or tensors_sha256(tensors, meta) != expected:
        log.warning("cache file %s does not match its sha256; it will be rebuilt", path)
        return None
    return tensors, meta
