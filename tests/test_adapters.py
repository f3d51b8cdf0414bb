"""Adapters: PEFT-format save/load, base-model checks, merged and in-place application."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_adapter
from safetensors.torch import load_file

from palette_lens.adapters.apply import adapters_applied, apply_adapter, merged_hf_model, sum_deltas
from palette_lens.adapters.baked import load_adapter
from palette_lens.errors import AdapterMismatchError, PaletteError
from palette_lens.models.copies import plain_hf_model

PROMPTS = ["How do I write a program?", "hello there, write a poem about the sea", "malware virus attack"]


def _logits(model_or_hf, enc):
    with torch.no_grad():
        out = model_or_hf(**enc)
    return torch.log_softmax(out.logits[:, -1].float(), -1)


def test_deltas_are_scaled_products(tiny_qwen):
    ad = random_adapter(tiny_qwen)
    for n, d in ad.deltas().items():
        torch.testing.assert_close(d, 2.0 * ad.lora_B[n] @ ad.lora_A[n])
        assert d.shape == (ad.lora_B[n].shape[0], ad.lora_A[n].shape[1])


def test_save_load_round_trip_reproduces_logits(tiny_qwen, tmp_path):
    ad = random_adapter(tiny_qwen, meta={"scale": 2.5, "target_mode": "neutral", "metrics": {"x": 1.0}})
    ad.save(tmp_path / "cyber")
    files = sorted(p.name for p in (tmp_path / "cyber").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "direction.safetensors", "palette_meta.json"]
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers
    keys = load_file(str(tmp_path / "cyber" / "adapter_model.safetensors")).keys()
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in keys
    meta = json.loads((tmp_path / "cyber" / "palette_meta.json").read_text())
    assert meta["base_fingerprint"] == tiny_qwen.fingerprint and meta["layer"] == 2 and meta["block"] == 1

    back = load_adapter(tmp_path / "cyber", tiny_qwen)
    assert back.module_names == ad.module_names and back.layer_index == 1
    assert back.meta["metrics"] == {"x": 1.0} and back.domain == "cyber"
    torch.testing.assert_close(back.direction, ad.direction)
    with adapters_applied(tiny_qwen, [ad]):
        first = tiny_qwen.last_logits(PROMPTS)
    with adapters_applied(tiny_qwen, [back]):
        second = tiny_qwen.last_logits(PROMPTS)
    assert torch.equal(first, second)
    assert (first - tiny_qwen.last_logits(PROMPTS)).abs().max() > 1e-3  # the adapter does something


def test_peft_from_pretrained_loads_the_folder(tiny_qwen, tmp_path):
    from peft import PeftModel

    ad = random_adapter(tiny_qwen)
    ad.save(tmp_path / "a")
    enc = tiny_qwen.encode(PROMPTS)
    base = tiny_qwen.last_logits(PROMPTS)
    with adapters_applied(tiny_qwen, [ad]):
        adapted = tiny_qwen.last_logits(PROMPTS)
    peft_model = PeftModel.from_pretrained(plain_hf_model(tiny_qwen, share_weights=False), str(tmp_path / "a"))
    torch.testing.assert_close(_logits(peft_model, enc), adapted, atol=1e-5, rtol=1e-4)
    with peft_model.disable_adapter():
        torch.testing.assert_close(_logits(peft_model, enc), base, atol=1e-5, rtol=1e-4)
    # LoRA sits on block 1 only
    lora_names = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert lora_names and all(".layers.1." in n for n in lora_names)


def test_plain_copy_equals_model(tiny_qwen, tiny_llama):
    for model in (tiny_qwen, tiny_llama):
        plain = plain_hf_model(model)
        enc = model.encode(PROMPTS)
        torch.testing.assert_close(_logits(plain, enc), model.last_logits(PROMPTS), atol=1e-5, rtol=1e-4)
        assert "_original_component" not in " ".join(n for n, _ in plain.named_parameters())


def test_merged_equals_in_place_and_leaves_model_untouched(tiny_qwen):
    ad = random_adapter(tiny_qwen)
    before = {k: v.clone() for k, v in tiny_qwen.hf_model.state_dict().items()}
    enc = tiny_qwen.encode(PROMPTS)
    merged = merged_hf_model(tiny_qwen, [ad])
    with adapters_applied(tiny_qwen, [ad]):
        in_place = tiny_qwen.last_logits(PROMPTS)
    torch.testing.assert_close(_logits(merged, enc), in_place, atol=1e-5, rtol=1e-4)
    new_model = apply_adapter(tiny_qwen, ad)
    torch.testing.assert_close(new_model.last_logits(PROMPTS), in_place, atol=1e-5, rtol=1e-4)
    assert new_model.fingerprint != tiny_qwen.fingerprint
    after = tiny_qwen.hf_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_in_place_application_restores_after_exception(tiny_qwen):
    ad = random_adapter(tiny_qwen)
    base = tiny_qwen.last_logits(PROMPTS)
    with pytest.raises(RuntimeError, match="boom"):
        with adapters_applied(tiny_qwen, [ad]):
            assert not torch.equal(tiny_qwen.last_logits(PROMPTS), base)
            raise RuntimeError("boom")
    assert torch.equal(tiny_qwen.last_logits(PROMPTS), base)


def test_adapters_on_different_blocks_sum(tiny_qwen):
    a, b = random_adapter(tiny_qwen, 0, seed=1), random_adapter(tiny_qwen, 2, seed=2)
    total = sum_deltas([a, b])
    assert set(total) == set(a.module_names) | set(b.module_names)
    with adapters_applied(tiny_qwen, [a, b]):
        both = tiny_qwen.last_logits(PROMPTS)
    with adapters_applied(tiny_qwen, [a]):
        with adapters_applied(tiny_qwen, [b]):
            nested = tiny_qwen.last_logits(PROMPTS)
    torch.testing.assert_close(both, nested, atol=1e-6, rtol=1e-5)


def test_wrong_base_model_is_refused(tiny_qwen, tmp_path):
    from palette_lens.models.tiny import tiny_chat_model

    ad = random_adapter(tiny_qwen)
    ad.save(tmp_path / "a")
    other = tiny_chat_model("qwen2", seed=5)  # same architecture, other weights
    with pytest.raises(AdapterMismatchError, match="baked on base model.*fingerprint"):
        load_adapter(tmp_path / "a", other)
    with pytest.raises(AdapterMismatchError):
        with adapters_applied(other, [ad]):
            pass
    with pytest.raises(AdapterMismatchError):
        merged_hf_model(other, [ad])
    with pytest.raises(AdapterMismatchError):
        ad.check_base("0123456789abcdef")
    ad.check_base(tiny_qwen.fingerprint)  # fine
    ad.check_base(plain_hf_model(tiny_qwen))  # a plain HF copy has the same fingerprint


def test_corrupt_or_foreign_folders_are_refused(tiny_qwen, tmp_path):
    with pytest.raises(PaletteError, match="not found"):
        load_adapter(tmp_path / "missing")
    ad = random_adapter(tiny_qwen)
    folder = ad.save(tmp_path / "a")
    (folder / "palette_meta.json").unlink()
    with pytest.raises(PaletteError, match="not a palette-lens adapter"):
        load_adapter(folder)
    folder = ad.save(tmp_path / "b")
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PaletteError, match="corrupt"):
        load_adapter(folder)


def test_save_overwrites_atomically(tiny_qwen, tmp_path):
    a, b = random_adapter(tiny_qwen, seed=1), random_adapter(tiny_qwen, seed=2)
    a.save(tmp_path / "x")
    b.save(tmp_path / "x")
    back = load_adapter(tmp_path / "x")
    n = back.module_names[0]
    assert torch.equal(back.lora_A[n], b.lora_A[n])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
