"""A profile as one standard PEFT LoRA adapter: it loads with ``PeftModel.from_pretrained`` on a plain copy of the
base model and gives the merged profile's logits at every position (adapters on different blocks, and adapters
sharing a block with different ranks and a composition weight)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_adapter
from safetensors.torch import load_file

from palette_lens.adapters.stacking import stack_factors
from palette_lens.compose.export import PEFT_FOLDER, PROFILE_FILE, export_profile
from palette_lens.compose.peft_export import profile_peft_adapter, save_peft_adapter
from palette_lens.compose.profiles import Profile, merged_profile, profile_adapters
from palette_lens.errors import AdapterMismatchError, PaletteError
from palette_lens.models.copies import plain_hf_model

PROMPTS = ["How do I write a program?", "hello there, write a poem about the sea", "malware virus attack", "x"]


@pytest.fixture(scope="module")
def adapters(tiny_qwen):
    return {
        "cyber": random_adapter(tiny_qwen, 0, 1, "cyber", scale=0.15),
        "hate": random_adapter(tiny_qwen, 1, 2, "hate", scale=0.15, rank=4, alpha=8.0),
        "violence": random_adapter(tiny_qwen, 1, 3, "violence", scale=0.15, rank=8, alpha=16.0),  # hate's block
    }


def all_logits(model, lm) -> torch.Tensor:
    """Logits at every position (left padding masked out), float32."""
    enc = model.encode(PROMPTS)
    with torch.no_grad():
        out = lm(**enc).logits.float()
    return out[enc["attention_mask"].bool()]


def loaded_peft(model, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(plain_hf_model(model, share_weights=False), str(folder)).eval()


def check_config(folder, adapters, rank):
    config = json.loads((folder / "adapter_config.json").read_text())
    names = sorted({n for a in adapters for n in a.module_names})
    assert config["r"] == rank and config["lora_alpha"] == rank
    assert sorted(config["target_modules"]) == names and all(n.startswith("model.layers.") for n in names)
    assert config.get("layers_to_transform") is None and config.get("rank_pattern") in (None, {})
    assert config["peft_type"] == "LORA"
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert len(tensors) == 2 * len(names)
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")} == {rank}
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_adapters_on_different_blocks(tiny_qwen, adapters, tmp_path):
    chosen = profile_adapters(Profile(("cyber", "hate")), adapters)
    folder = save_peft_adapter(tiny_qwen, chosen, tmp_path / "lora")
    check_config(folder, chosen, 8)  # cyber's rank 8; hate's rank 4 padded with zeros
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    merged = all_logits(tiny_qwen, merged_profile(tiny_qwen, chosen))
    served = all_logits(tiny_qwen, loaded_peft(tiny_qwen, folder))
    torch.testing.assert_close(served, merged, atol=1e-5, rtol=1e-5)
    assert (merged - all_logits(tiny_qwen, tiny_qwen.hf_model)).abs().max() > 1e-3  # the adapters do something


def test_adapters_on_one_block_stack_their_ranks(tiny_qwen, adapters, tmp_path):
    chosen = profile_adapters(Profile(("hate", "violence")), adapters, compose_weight=0.85)
    assert [a.meta["composition_weight"] for a in chosen] == [0.85, 0.85]
    folder = save_peft_adapter(tiny_qwen, chosen, tmp_path / "lora")
    check_config(folder, chosen, 4 + 8)
    merged = all_logits(tiny_qwen, merged_profile(tiny_qwen, chosen))
    served = all_logits(tiny_qwen, loaded_peft(tiny_qwen, folder))
    torch.testing.assert_close(served, merged, atol=1e-5, rtol=1e-5)


def test_three_adapters_pad_to_one_rank(tiny_qwen, adapters):
    chosen = profile_adapters(Profile(("cyber", "hate", "violence")), adapters)
    config, tensors = profile_peft_adapter(chosen, "tiny")
    assert config.r == 12 and config.lora_alpha == 12 and config.base_model_name_or_path == "tiny"
    lora_a, lora_b = stack_factors(chosen, rank=12)
    for a in chosen:  # each module's B·A is the sum of the deltas of the adapters on it
        for n, delta in a.deltas().items():
            others = sum((b.deltas()[n] for b in chosen if b is not a and n in b.lora_A), torch.zeros_like(delta))
            torch.testing.assert_close(lora_b[n] @ lora_a[n], delta + others, atol=1e-6, rtol=1e-5)
    cyber = next(n for n in chosen[0].module_names)
    a_key = f"base_model.model.{cyber}.lora_A.weight"
    assert tensors[a_key].shape[0] == 12 and not tensors[a_key][8:].any()  # padded with zero rows


def test_bad_inputs_are_refused(tiny_qwen, tiny_llama, adapters, tmp_path):
    with pytest.raises(PaletteError, match="at least one adapter"):
        profile_peft_adapter([])
    with pytest.raises(PaletteError, match="more than rank"):
        stack_factors([adapters["hate"], adapters["violence"]], rank=8)
    with pytest.raises(AdapterMismatchError):
        save_peft_adapter(tiny_llama, [adapters["cyber"]], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_holds_the_peft_adapter(tiny_qwen, adapters, tmp_path):
    chosen = profile_adapters(Profile(("cyber", "hate", "violence")), adapters)
    folder = export_profile(tiny_qwen, chosen, tmp_path / "profile")
    info = json.loads((folder / PROFILE_FILE).read_text())
    assert info["peft_adapter"] == PEFT_FOLDER == "peft_adapter"
    assert (folder / PEFT_FOLDER / "adapter_config.json").is_file()
    assert not [p for p in folder.rglob(".*")]  # no temporary leftovers inside the export
    check_config(folder / PEFT_FOLDER, chosen, 12)
    merged = all_logits(tiny_qwen, merged_profile(tiny_qwen, chosen))
    torch.testing.assert_close(all_logits(tiny_qwen, loaded_peft(tiny_qwen, folder / PEFT_FOLDER)), merged,
                               atol=1e-5, rtol=1e-5)
