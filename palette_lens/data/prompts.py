"""The built-in prompts and user JSONL files loaded into one :class:`~palette_lens.data.prompt_set.PromptSet`.

The records and their format are :mod:`palette_lens.data.records`; domains and splits
:mod:`palette_lens.data.prompt_set`.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path

from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import HARMLESS, RESERVED, Record, read_jsonl
from palette_lens.errors import DataError

GATE_POOL_FOLDER = "gate"  # built-in gate pool: data/gate/<domain>.jsonl


def _packaged_data_dir() -> Path | None:
    """``palette_lens/data/builtin`` of an installed wheel (setup.py copies ``data/`` there), or None."""
    folder = importlib.resources.files("palette_lens.data").joinpath("builtin")
    # Only a real folder will do (the loader reads files by path); a zip import falls back to the checkout.
    return folder if isinstance(folder, Path) and folder.is_dir() else None


def builtin_data_dir() -> Path:
    """The folder of built-in JSONL files.

    ``$PALETTE_LENS_DATA`` overrides it; otherwise the copy packaged in the wheel
    (``palette_lens/data/builtin``), else the repository's top-level ``data/`` folder (a checkout or an
    editable install). Raises :class:`DataError` when none of them exists.
    """
    env = os.environ.get("PALETTE_LENS_DATA")
    if env:
        return Path(env)
    packaged = _packaged_data_dir()
    if packaged is not None:
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "data"
    if checkout.is_dir():
        return checkout
    raise DataError(
        f"the built-in prompt data is missing: neither the packaged folder palette_lens/data/builtin nor the "
        f"repository folder {checkout} exists (reinstall palette-lens from a wheel built with its data, or "
        f"set PALETTE_LENS_DATA to a folder of JSONL files)"
    )


def builtin_files() -> list[Path]:
    folder = builtin_data_dir()
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"no built-in data files in {folder}")
    return files


def load_prompts(
    files: Sequence[str | Path] = (),
    replace: bool = False,
    domains: Sequence[str] | None = None,
    seed: int = 0,
    train_frac: float = 0.2,
    gate_files: Sequence[str | Path] = (),
) -> PromptSet:
    """Load built-in prompts and user files.

    Args:
        files: user JSONL files. A domain present in a user file replaces the built-in domain of that
            name (user data is never mixed with built-in prompts of the same domain).
        replace: use only the user files for harmful domains; built-in ``harmless`` / ``borderline`` are
            still used unless the files bring their own.
        domains: keep only these domains (plus harmless / borderline); unknown names raise.
        seed: split setting: the seed of the per-domain shuffle.
        train_frac: split setting: the share of each domain that goes to train.
        gate_files: JSONL files (same format) of extra requests that only a domain gate trains on (its
            ``"gate"`` part). A domain in them replaces the built-in gate pool of that domain (``data/gate/``,
            which serves only the built-in domains whose prompts are not replaced). Pool prompts that are also
            among the domain's own prompts are left out of its ``"gate"`` part, so no test prompt is trained on.

    Returns:
        The merged :class:`PromptSet` (duplicate prompts within a domain dropped).

    Raises:
        UnknownDomainError: a name in ``domains`` that the data does not contain.
        DataError: a malformed data file, missing built-in data, no ``harmless`` prompts at all, or a gate file
            whose domain has no prompts.

    Examples:
        >>> load_prompts(domains=["cyber"]).domains
        ['cyber', 'harmless', 'borderline']
        >>> mine = load_prompts(["my_domains.jsonl"], replace=True)      # doctest: +SKIP
    """
    builtin: dict[str, list[Record]] = {}
    for path in builtin_files():
        for r in read_jsonl(path):
            builtin.setdefault(r.domain, []).append(r)
    user: dict[str, list[Record]] = {}
    for path in files:
        for r in read_jsonl(path):
            user.setdefault(r.domain, []).append(r)
    if replace:
        merged = {d: v for d, v in builtin.items() if d in RESERVED}
    else:
        merged = dict(builtin)
    merged.update(user)
    merged = {d: _dedupe(v) for d, v in merged.items()}
    pool = {d: v for d, v in _builtin_gate_pool().items() if d in merged and d not in user}
    user_pool: dict[str, list[Record]] = {}
    for path in gate_files:
        for r in read_jsonl(path):
            if r.domain not in merged:
                raise DataError(f"{path}: gate pool domain {r.domain!r} has no prompts; known domains: "
                                f"{', '.join(sorted(merged))}")
            user_pool.setdefault(r.domain, []).append(r)
    pool.update(user_pool)
    pool = {d: _dedupe(v) for d, v in pool.items()}
    ps = PromptSet(merged, seed=seed, train_frac=train_frac, gate_pool=pool)
    if domains is not None:
        for d in domains:
            ps.check_domain(d)
        keep = set(domains) | set(RESERVED)
        ps = PromptSet({d: v for d, v in merged.items() if d in keep}, seed=seed, train_frac=train_frac,
                       gate_pool={d: v for d, v in pool.items() if d in keep})
    if HARMLESS not in ps.by_domain:
        raise DataError("no 'harmless' prompts found: built-in data missing and none in the given files")
    return ps


def _dedupe(records: list[Record]) -> list[Record]:
    seen: set[str] = set()
    out = []
    for r in records:
        if r.prompt not in seen:
            seen.add(r.prompt)
            out.append(r)
    return out


def _builtin_gate_pool() -> dict[str, list[Record]]:
    """The built-in gate pool (``<built-in data>/gate/*.jsonl``) by domain; empty when the folder is absent."""
    folder = builtin_data_dir() / GATE_POOL_FOLDER
    pool: dict[str, list[Record]] = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
        for r in read_jsonl(path):
            pool.setdefault(r.domain, []).append(r)
    return pool

