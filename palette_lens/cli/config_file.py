"""``--config FILE.toml``: the research settings of the bake and the gate, read with tomllib and validated key by key."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from palette_lens.errors import PaletteError

#: section -> (module, class, the class as the docs name it)
CONFIG_SECTIONS: dict[str, tuple[str, str, str]] = {
    "bake": ("palette_lens.bake.config", "BakeConfig", "BakeConfig"),
    "gate": ("palette_lens.gate.config", "GateConfig", "GateConfig"),
}


def _describe(tp: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) if a is not type(None) else "'none'" for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers", str: "strings"}.get(args[0], str(args[0]))
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural}"
        return f"a list of {len(args)} {plural}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether ``value`` from TOML fits the type ``tp``, the value converted: lists to tuples, ints to floats)."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return value in args, value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and isinstance(value, str) and value.lower() == "none":
            return True, None
        for a in args:
            if a is not type(None):
                ok, v = _convert(value, a)
                if ok:
                    return True, v
        return False, value
    if origin is tuple:
        if not isinstance(value, list):
            return False, value
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            return False, value
        converted = [_convert(v, k) for v, k in zip(value, kinds)]
        return all(ok for ok, _ in converted), tuple(v for _, v in converted)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def read_config(path: str | Path, sections: tuple[str, ...]) -> dict[str, dict]:
    """The ``[section]`` tables of a TOML file, each key checked against its settings class: section → settings.

    Raises:
        PaletteError: the file is missing or not TOML, a table or key is unknown, a value has the wrong type or
            the settings class refuses it; the message names the file, the table and the key.
    """
    import dataclasses
    import difflib
    import importlib
    import typing

    import tomllib

    path = Path(path).expanduser()
    if not path.is_file():
        raise PaletteError(f"--config {path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PaletteError(f"--config {path} is not valid TOML: {exc}") from None
    out: dict[str, dict] = {}
    for section, table in doc.items():
        if section not in sections:
            raise PaletteError(f"--config {path}: unknown table [{section}]; this command reads "
                               + ", ".join(f"[{s}]" for s in sections))
        if not isinstance(table, dict):
            raise PaletteError(f"--config {path}: {section} must be a table ([{section}] followed by key = value lines)")
        module, name, _ = CONFIG_SECTIONS[section]
        cls = getattr(importlib.import_module(module), name)
        hints = typing.get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls)]
        settings = {}
        for key, value in table.items():
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
                raise PaletteError(f"--config {path}: unknown key {key!r} in [{section}]{hint}")
            ok, converted = _convert(value, hints[key])
            if not ok:
                raise PaletteError(f"--config {path}: [{section}] {key} must be {_describe(hints[key])}, not {value!r}")
            settings[key] = converted
        try:
            cls(**settings)
        except PaletteError as exc:
            raise PaletteError(f"--config {path}: [{section}]: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise PaletteError(f"--config {path}: [{section}]: {exc}") from None
        out[section] = settings
    return out


def config_from_args(args: argparse.Namespace) -> dict[str, dict]:
    """``--config``'s tables (read and checked once per command; {} without ``--config``)."""
    cached = getattr(args, "_config", None)
    if cached is None:
        path = getattr(args, "config", None)
        cached = read_config(path, getattr(args, "_config_sections", tuple(CONFIG_SECTIONS))) if path else {}
        args._config = cached
    return cached
