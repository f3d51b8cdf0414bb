"""Exporting a profile: a merged Hugging Face folder with the profile's metadata, one PEFT adapter (and its gate).

The folder loads with plain ``transformers``, without palette-lens; its ``peft_adapter/`` loads with ``peft``
on the base model (:mod:`palette_lens.compose.peft_export`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from palette_lens.adapters.baked import BakedAdapter
from palette_lens.compose.peft_export import save_peft_adapter
from palette_lens.compose.profiles import Profile, merged_profile
from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.util.atomic import atomic_folder

log = logging.getLogger(__name__)

PROFILE_FILE = "palette_profile.json"
GATE_FOLDER = "palette_gate"
PEFT_FOLDER = "peft_adapter"

def export_profile(
    model: ChatModel, adapters: Sequence[BakedAdapter], folder: str | Path, profile: Profile | None = None,
    gate: Any = None,
) -> Path:
    """Write the merged profile as a plain Hugging Face model folder (weights, config, tokenizer).

    The folder loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
    and carries ``palette_profile.json`` (domains, base fingerprint, adapter layers). ``peft_adapter/`` holds the
    whole profile as one standard PEFT LoRA adapter (:func:`~palette_lens.compose.peft_export.save_peft_adapter`)
    for ``PeftModel.from_pretrained(base, folder / "peft_adapter")`` on the base model. With ``gate`` (a
    :class:`palette_lens.gate.domain_gate.DomainGate`) the gate goes into ``palette_gate/`` (load it with
    ``DomainGate.load(folder / "palette_gate", base_model)``). The folder is built in a temporary sibling folder
    and moved into place, so a reader never sees a partial export.

    Args:
        model: the base chat model.
        adapters: the profile's adapters (deltas summed as given; see :func:`profile_adapters` for weights).
        folder: the folder to write.
        profile: the profile recorded in ``palette_profile.json`` (default: the adapters' domains in order).
        gate: an optional :class:`~palette_lens.gate.domain_gate.DomainGate` saved alongside.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        PaletteError: the gate opens for other domains than the profile's.
        AdapterMismatchError: an adapter or the gate was made for another base model.

    Examples:
        >>> chosen = profile_adapters(Profile.parse("cyber+hate"), adapters)   # doctest: +SKIP
        >>> export_profile(model, chosen, "exports/cyber+hate", gate=gate)    # doctest: +SKIP
        PosixPath('exports/cyber+hate')
    """
    folder = Path(folder)
    profile = profile or Profile(tuple(a.domain for a in adapters))
    merged = merged_profile(model, adapters)
    info = {
        "profile": profile.name,
        "authorized": list(profile.domains),
        "base_model": model.name,
        "base_fingerprint": model.fingerprint,
        "base_source": model.source,
        "adapters": [{"domain": a.domain, "block": a.layer_index, "layer": a.layer,
                      "position": a.meta.get("position"), "weight": a.meta.get("composition_weight", 1.0)}
                     for a in adapters],
        "peft_adapter": PEFT_FOLDER,
    }
    if gate is not None:
        if tuple(gate.domains) != tuple(profile.domains):
            raise PaletteError(f"the gate opens for {'+'.join(gate.domains)}, but the profile is {profile.name}")
        gate.check_model(model)
        info["gate"] = GATE_FOLDER
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        save_peft_adapter(model, adapters, tmp / PEFT_FOLDER)
        (tmp / PROFILE_FILE).write_text(json.dumps(info, indent=1))
        if gate is not None:
            gate.save(tmp / GATE_FOLDER)

    atomic_folder(folder, write)
    log.info("exported profile %s to %s", profile.name, folder)
    return folder
