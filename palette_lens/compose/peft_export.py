"""A whole profile as one standard PEFT LoRA adapter (what multi-LoRA servers load, one adapter per request).

Every domain's factors go into one adapter: adapters on different blocks keep their own modules, adapters
sharing a block have their ranks stacked on the shared modules
(:func:`palette_lens.adapters.stacking.stack_factors`). One rank ``r`` serves all modules (the largest stacked
rank; smaller ones are padded with zeros) and ``lora_alpha = r`` (scaling 1): each adapter's own scaling,
composition weight included, is folded into its B. ``target_modules`` names the exact modules. Loaded with
``PeftModel.from_pretrained(base, folder)`` it gives the merged profile's logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from palette_lens.adapters.baked import BakedAdapter, peft_lora_config, peft_tensors, write_peft_files
from palette_lens.adapters.stacking import stack_factors
from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.util.atomic import atomic_folder

log = logging.getLogger(__name__)


def profile_peft_adapter(
    adapters: Sequence[BakedAdapter], base_model_name: str | None = None
) -> tuple[Any, dict[str, torch.Tensor]]:
    """One PEFT LoRA adapter holding every adapter of a profile: its ``LoraConfig`` and its state dict.

    Args:
        adapters: the profile's adapters, composition weight applied
            (:func:`palette_lens.compose.profiles.profile_adapters`); their deltas are summed as given.
        base_model_name: recorded as the config's ``base_model_name_or_path`` (the base model's source).

    Returns:
        ``(config, tensors)``: a ``peft.LoraConfig`` with one ``r`` for all modules, ``lora_alpha = r``, the
        exact module names as ``target_modules`` (no ``layers_to_transform``), and the factors under the key
        names ``PeftModel.save_pretrained`` writes (float32, CPU).

    Raises:
        PaletteError: no adapters, or adapters whose factors for one module disagree in shape.

    Examples:
        >>> chosen = profile_adapters(Profile.parse("cyber+hate"), adapters)      # doctest: +SKIP
        >>> config, tensors = profile_peft_adapter(chosen)                       # doctest: +SKIP
        >>> config.r == config.lora_alpha                                        # doctest: +SKIP
        True
    """
    if not adapters:
        raise PaletteError("a profile's PEFT adapter needs at least one adapter")
    names = {n for a in adapters for n in a.module_names}
    rank = max(sum(a.lora_A[n].shape[0] for a in adapters if n in a.lora_A) for n in names)
    lora_a, lora_b = stack_factors(adapters, rank=rank)
    config = peft_lora_config(sorted(lora_a), rank, rank, base_model_name)
    return config, peft_tensors(lora_a, lora_b)


def save_peft_adapter(model: ChatModel, adapters: Sequence[BakedAdapter], folder: str | Path) -> Path:
    """Write a profile as one standard PEFT LoRA adapter folder (``adapter_config.json`` + safetensors).

    The folder is what ``PeftModel.save_pretrained`` writes; ``PeftModel.from_pretrained(base, folder)`` on a
    plain Hugging Face copy of ``model`` gives the merged profile's logits
    (:func:`palette_lens.compose.profiles.merged_profile`). It is built in a temporary sibling folder and moved
    into place.

    Args:
        model: the base chat model (its ``source`` is recorded as ``base_model_name_or_path``).
        adapters: the profile's adapters, composition weight applied (see :func:`profile_peft_adapter`).
        folder: the folder to write.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        PaletteError: no adapters, or adapters whose factors for one module disagree in shape.
        AdapterMismatchError: an adapter was baked on another base model.

    Examples:
        >>> chosen = profile_adapters(Profile.parse("cyber+hate"), adapters)      # doctest: +SKIP
        >>> save_peft_adapter(model, chosen, "exports/cyber+hate-lora")          # doctest: +SKIP
        PosixPath('exports/cyber+hate-lora')
        >>> peft_model = PeftModel.from_pretrained(base_hf, "exports/cyber+hate-lora")  # doctest: +SKIP
    """
    for a in adapters:
        a.check_base(model)
    config, tensors = profile_peft_adapter(adapters, model.source or model.name)
    folder = Path(folder)
    atomic_folder(folder, lambda tmp: write_peft_files(tmp, config, tensors))
    log.info("wrote a rank-%d PEFT adapter of %d modules to %s", config.r, len(config.target_modules), folder)
    return folder
