"""A private, trainable copy of one decoder block: peft LoRA on every linear module of that block only.

Module names are those of a plain Hugging Face model (``model.layers.11.mlp.up_proj``), so the trained factors
save and load as a regular PEFT adapter of the full model (:mod:`palette_lens.adapters.baked`).
"""

from __future__ import annotations

import torch

from palette_lens.models.blocks import linear_module_names, plain_decoder_layer
from palette_lens.models.chat_model import ChatModel


def _holder(layer: torch.nn.Module, prefix: str) -> torch.nn.Module:
    """Nest ``layer`` under ``prefix`` (e.g. "model.layers.11") so module names match a plain HF model."""
    parts = prefix.split(".")
    root = torch.nn.ModuleDict()
    cur = root
    for part in parts[:-1]:
        nxt = torch.nn.ModuleDict()
        cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = layer
    return root


class LoraBlock:
    """A private copy of one decoder block with LoRA on all its linear modules (peft).

    Attributes:
        prefix: the block's module path in a plain HF model.
        peft_model: the peft-wrapped holder; ``layer`` runs the adapted block.
    """

    def __init__(self, model: ChatModel, layer_index: int, rank: int, alpha: float, seed: int):
        from peft import LoraConfig, get_peft_model

        self.layer_index = layer_index
        self.prefix = model.decoder_layer_prefix(layer_index)
        layer = plain_decoder_layer(model, layer_index).float()
        self.modules = linear_module_names(layer, self.prefix)
        self.rank, self.alpha = rank, alpha
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=self.modules)
        self.peft_model = get_peft_model(_holder(layer, self.prefix), config)
        self.layer = self.peft_model.get_submodule(f"base_model.model.{self.prefix}")

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def factors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Current LoRA factors (copies): A name → [r, in], B name → [out, r]."""
        a, b = {}, {}
        for name in self.modules:
            mod = self.peft_model.get_submodule(f"base_model.model.{name}")
            a[name] = mod.lora_A["default"].weight.detach().clone()
            b[name] = mod.lora_B["default"].weight.detach().clone()
        return a, b

    def load_factors(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in self.modules:
                mod = self.peft_model.get_submodule(f"base_model.model.{name}")
                mod.lora_A["default"].weight.copy_(a[name])
                mod.lora_B["default"].weight.copy_(b[name])
