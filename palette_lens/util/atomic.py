"""Atomic writes: build a file or folder beside its target, then rename it into place.

A reader (or a rerun after a crash, a full disk or Ctrl-C) sees either the previous complete version or
the new complete version, never a partial one. Temporary names start with ``.`` and end with ``.tmp``;
they are removed when the write fails.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


def _default_mode(path: Path, base: int) -> int:
    """Permissions a plain ``open``/``mkdir`` would give (``base`` minus the umask), or the old file's."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return base & ~umask


def _fsync(path: str | Path) -> None:
    """Flush a file's data to disk (best effort: some file systems do not support it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _raise_named(exc: OSError, tmp: str | Path, target: Path) -> NoReturn:
    """Raise ``exc`` naming ``target`` instead of a temporary path (or of nothing), same errno and class."""
    name = str(exc.filename) if exc.filename is not None else None
    if exc.errno is None or (name is not None and not name.startswith(str(tmp))):
        raise exc
    raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(target)) from exc


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; nothing partial is ever left at ``path``.

    When ``write`` raises (e.g. ``OSError(ENOSPC)`` on a full disk), the temporary file is removed and a
    previous file at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _default_mode(path, 0o666)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp creates 0600; give the file the permissions a plain write would
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _raise_named(exc, tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    """JSON for values ``json`` does not know: tensors as lists, sets and tuples as lists, the rest as text."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (tensors, sets and paths converted)."""
    import json

    return atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default))


def atomic_folder(folder: str | Path, write: Callable[[Path], object]) -> Path:
    """Build ``folder`` by ``write(tmp_folder)`` in a temporary sibling and swap it into place.

    A previous ``folder`` is replaced only after ``write`` has succeeded; when ``write`` raises, the
    temporary folder is removed and the previous folder is left as it was. Anything at ``folder`` that is not
    a folder (a file, a link) is never replaced: ``FileExistsError`` before ``write`` runs.
    """
    folder = Path(folder)
    if (folder.exists() or folder.is_symlink()) and (folder.is_symlink() or not folder.is_dir()):
        raise FileExistsError(errno.EEXIST, "exists and is not a folder; it was left as it was", str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    mode = _default_mode(folder, 0o777)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    old = None
    try:
        try:
            write(tmp)
        except OSError as exc:
            _raise_named(exc, tmp, folder)
        os.chmod(tmp, mode)  # mkdtemp creates 0700
        for p in tmp.rglob("*"):
            if p.is_file():
                _fsync(p)
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            if not folder.exists():  # the swap failed half way: put the previous folder back
                os.replace(old, folder)
            else:
                shutil.rmtree(old, ignore_errors=True)
    return folder
