"""What several commands do with their parsed arguments: load the model and the data, read the gate's settings.

Arguments are declared in :mod:`palette_lens.cli.options` (value types in :mod:`palette_lens.cli.value_types`),
checked before any model loads by :mod:`palette_lens.cli.checks`, and ``--config`` is read by
:mod:`palette_lens.cli.config_file`; see ``docs/cli.md`` for the table of bad inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from palette_lens.cli.checks import (
    check_data_args,
)
from palette_lens.cli.config_file import config_from_args
from palette_lens.errors import PaletteError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- the gate's settings
def _kind_list(text: str) -> tuple[str, ...]:
    """``"a, b,a"`` → ("a", "b"); ``"none"`` → ()."""
    if text.strip().lower() == "none":
        return ()
    return tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))


def gate_settings_from_args(args: argparse.Namespace) -> dict:
    """The :class:`~palette_lens.gate.config.GateConfig` overrides of ``[gate]`` in ``--config`` and the
    ``--gate-*`` flags (the flags win), checked by building the config (a bad setting is a PaletteError)."""
    from palette_lens.gate.config import GateConfig

    settings: dict = dict(config_from_args(args).get("gate", {}))
    for key, flag in (("layer", "gate_layer"), ("threshold", "gate_threshold"), ("probe", "gate_probe")):
        if getattr(args, flag, None) is not None:
            settings[key] = getattr(args, flag)
    kinds_text = getattr(args, "gate_kinds", None)
    if kinds_text is not None:
        if kinds_text.strip().lower() == "none":
            settings["adversarial"] = False
        else:
            settings["adversarial_kinds"] = _kind_list(kinds_text)
    variants = getattr(args, "gate_authorized_variants", None)
    if variants is not None:
        settings["authorized_variants"] = _kind_list(variants)
    veto = getattr(args, "gate_segment_veto", None)
    if veto is None:
        if settings.get("probe") == "binary" and "segment_veto" not in settings:
            settings["segment_veto"] = None  # a binary probe reads prompts whole unless a veto is asked for
    elif veto.strip().lower() == "off":
        settings["segment_veto"] = None
    else:
        try:
            settings["segment_veto"] = float(veto)
        except ValueError:
            raise PaletteError(f"--gate-segment-veto takes a probability or 'off', not {veto!r}") from None
    GateConfig(**settings)
    return settings


def gate_config_from_args(args: argparse.Namespace):
    """The :class:`palette_lens.gate.config.GateConfig` of ``--gate`` (checked before the model loads), or None.

    Settings not given keep :class:`~palette_lens.gate.config.GateConfig`'s defaults; a binary probe has no segment veto
    unless one is asked for (and then it is an error).
    """
    from palette_lens.gate.config import GateConfig

    if not args.gate:
        return None
    return GateConfig(**gate_settings_from_args(args))


def load_model_from_args(args: argparse.Namespace):
    from palette_lens.models.loading import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)


def load_data_from_args(args: argparse.Namespace):
    """The prompt set of ``--data`` / ``--replace-data`` / ``--gate-data`` / ``--seed``, every domain checked to split.

    Checking the splits here reports a domain with too few prompts before the model is loaded.
    """
    from palette_lens.data.prompts import load_prompts

    check_data_args(args)
    prompts = load_prompts(args.data, replace=args.replace_data, seed=args.seed,
                           gate_files=getattr(args, "gate_data", None) or [])
    for domain in prompts.domains:
        prompts.split(domain)
    return prompts


def run_settings(folder: str | Path) -> tuple[dict, str | None]:
    """A finished run's pipeline settings and data hash, read from its ``details.json``.

    Returns ``({}, None)`` when the folder holds no ``details.json`` or it cannot be read (a bake output, an
    older run): the commands then fall back to their own defaults.

    Examples:
        >>> run_settings("no/such/run")
        ({}, None)
    """
    from palette_lens.pipeline.run_folder import RunFolder

    path = RunFolder(Path(folder)).details_json
    if not path.is_file():
        return {}, None
    try:
        details = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s is unreadable; using default settings", path)
        return {}, None
    if not isinstance(details, dict):
        return {}, None
    config = details.get("config") if isinstance(details.get("config"), dict) else {}
    data = details.get("data") if isinstance(details.get("data"), dict) else {}
    return config, data.get("hash")


def compose_weight_for(given: float | None, run_config: dict) -> float:
    """The ΔW weight of composed profiles: ``--compose-weight`` when given, else the run's, else the default.

    Examples:
        >>> compose_weight_for(None, {"compose_weight": 1.0}), compose_weight_for(0.5, {"compose_weight": 1.0})
        (1.0, 0.5)
        >>> compose_weight_for(None, {})
        0.85
    """
    if given is not None:
        return float(given)
    weight = run_config.get("compose_weight")
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        return float(weight)
    from palette_lens.compose.profiles import DEFAULT_COMPOSE_WEIGHT

    return float(DEFAULT_COMPOSE_WEIGHT)


def echo(text: str = "") -> None:
    """Write a line to standard output (the commands' user-facing output)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


