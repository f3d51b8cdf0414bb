"""Checks that run before any model loads: inputs, outputs, profiles and flags that need other flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from palette_lens.cli.config_file import config_from_args
from palette_lens.errors import PaletteError


def check_gate_flags_need_gate(args: argparse.Namespace) -> None:
    """Gate settings given without ``--gate`` would be ignored: a PaletteError instead."""
    if getattr(args, "gate", False):
        return
    given = [f"--{name.replace('_', '-')}" for name in ("gate_layer", "gate_threshold", "gate_probe", "gate_kinds",
                                                       "gate_authorized_variants", "gate_segment_veto")
             if getattr(args, name, None) is not None]
    if given:
        raise PaletteError(f"{given[0]} only applies with --gate; add --gate or leave it out")
    if config_from_args(args).get("gate"):
        raise PaletteError("the [gate] table of --config only applies with --gate; add --gate or remove the table")


# ---------------------------------------------------------------------- inputs and outputs, checked first
def check_data_args(args: argparse.Namespace) -> None:
    """``--data`` / ``--gate-data`` name files (not folders); ``--replace-data`` comes with ``--data``."""
    for option in ("data", "gate_data"):
        flag = "--" + option.replace("_", "-")
        for name in getattr(args, option, None) or []:
            path = Path(name).expanduser()
            if path.is_dir():
                raise PaletteError(f"{flag} {path} is a folder; {flag} takes JSONL files, e.g. {flag} {path}/*.jsonl")
    if getattr(args, "replace_data", False) and not getattr(args, "data", None):
        raise PaletteError("--replace-data needs --data FILE.jsonl (the files that replace the built-in domains)")


def check_folder_input(path: str | Path, option: str = "--from") -> Path:
    """An input folder that must exist."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise PaletteError(f"{option} {folder}: no such folder")
    if not folder.is_dir():
        raise PaletteError(f"{option} {folder} is a file; it takes a folder")
    return folder


def check_output_folder(path: str | Path, option: str = "--out", any_folder: bool = False) -> Path:
    """An output folder a command writes files into: new, empty or an earlier palette-lens output.

    ``any_folder``: the command adds one or two named files to the folder (``compose``, ``leakage``), so any
    existing folder will do. A file at ``path`` is always refused (it is left as it was).
    """
    from palette_lens.pipeline.run_folder import RunFolder

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise PaletteError(f"{option} {folder} is an existing file; give a folder (new, empty or an earlier "
                           "palette-lens output)")
    if folder.is_dir() and not any_folder and any(folder.iterdir()) and not RunFolder(folder).is_output():
        raise PaletteError(f"{option} {folder} is a folder with other files in it, not a palette-lens output; "
                           "give a new or empty folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PaletteError(f"{option} {folder}: {parent} is a file, not a folder")
            break
    return folder


def check_output_file(path: Path, option: str = "--out") -> Path:
    """A file a command writes (replaced when it is a file): refused when a folder stands there."""
    if path.is_dir():
        raise PaletteError(f"{option}: {path} would be written as a file, but a folder is there; move it or give "
                           "another folder")
    return path


def parse_profile(text: str):
    """A ``--profile`` value (``cyber+hate``) as a :class:`~palette_lens.compose.profiles.Profile`; an empty
    name between two ``+`` is an error rather than skipped."""
    from palette_lens.compose.profiles import Profile

    parts = [p.strip() for p in text.replace(",", "+").split("+")]
    if any(parts) and not all(parts):
        raise PaletteError(f"profile {text!r} has an empty domain name; join domains with a single '+', e.g. cyber+hate")
    return Profile.parse(text)


def check_profiles_have(profiles, available: list[str] | tuple[str, ...], what: str) -> None:
    """Every domain of ``profiles`` is in ``available`` (the targets or the adapters), else a PaletteError.

    ``what`` completes "profile 'x' needs D, which ..." and may use ``{missing}`` and ``{available}``.
    """
    for p in profiles:
        missing = [d for d in p.domains if d not in available]
        if missing:
            names = ", ".join(missing)
            raise PaletteError(f"profile {p.name!r} needs {names}, which "
                               + what.format(missing=names, first=missing[0], available=", ".join(available) or "none"))


def check_adapter_inputs(source: str | None, folders: list[str]) -> list[str]:
    """The domains of ``--from DIR``'s ``adapters/*/`` and of the ``--adapter`` folders, read without torch.

    Raises:
        PaletteError: ``--from`` is missing or holds no adapters, an ``--adapter`` folder is not an adapter, or
            nothing is given.
    """
    import json

    from palette_lens.pipeline.run_folder import ADAPTER_META_FILE, RunFolder

    domains: list[str] = []
    if source:
        folder = check_folder_input(source)
        have = RunFolder(folder).adapter_domains()
        if not have:
            raise PaletteError(f"--from {folder} holds no adapters (expected {folder}/adapters/<domain>/)")
        domains += have
    for name in folders:
        folder = check_folder_input(name, "--adapter")
        meta = folder / ADAPTER_META_FILE
        if not meta.is_file():
            raise PaletteError(f"--adapter {folder} is not an adapter folder (no {ADAPTER_META_FILE})")
        try:
            domain = json.loads(meta.read_text(encoding="utf-8")).get("domain") or folder.name
        except (OSError, ValueError, AttributeError):
            raise PaletteError(f"adapter {folder} is corrupt: {ADAPTER_META_FILE} is not a JSON object") from None
        domains.append(str(domain))
    if not domains:
        raise PaletteError("no adapters given (use --from DIR or --adapter FOLDER)")
    return list(dict.fromkeys(domains))
