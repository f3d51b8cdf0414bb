"""Profiles: runtime (several active peft adapters) and merged composition agree; sums superpose; export."""

from __future__ import annotations

import pytest
import torch
from helpers import random_adapter

from palette_lens.adapters.apply import adapters_applied, sum_deltas
from palette_lens.compose.export import export_profile
from palette_lens.compose.interference import interference, leakage_matrix
from palette_lens.compose.profiles import (
    Profile,
    default_profiles,
    merged_profile,
    profile_adapters,
    runtime_profile,
    weighted_adapter,
)
from palette_lens.errors import AdapterMismatchError, PaletteError

PROMPTS = ["How do I write a program?", "hello there, write a poem about the sea", "malware virus attack", "x"]


def logprobs(model, lm) -> torch.Tensor:
    enc = model.encode(PROMPTS)
    with torch.no_grad():
        out = lm(**enc)
    return torch.log_softmax(out.logits[:, -1].float(), -1)


@pytest.fixture(scope="module")
def adapters(tiny_qwen):
    return {
        "cyber": random_adapter(tiny_qwen, 0, 1, "cyber", scale=0.15),
        "hate": random_adapter(tiny_qwen, 1, 2, "hate", scale=0.15),
        "violence": random_adapter(tiny_qwen, 1, 3, "violence", scale=0.15),  # same block as hate
    }


def test_profile_names_and_defaults():
    p = Profile.parse("cyber+hate")
    assert p.domains == ("cyber", "hate") and p.name == "cyber+hate" and len(p) == 2
    assert Profile.parse("cyber, hate") == p
    names = [q.name for q in default_profiles(["a", "b", "c"])]
    assert names == ["a", "b", "c", "a+b", "a+b+c"]
    assert len(default_profiles(["a", "b", "c"], pairs="all")) == 7
    with pytest.raises(PaletteError):
        Profile(("a", "a"))
    with pytest.raises(PaletteError, match="needs adapters"):
        profile_adapters(Profile(("a",)), {})


@pytest.mark.parametrize("combo", [("cyber",), ("cyber", "hate"), ("hate", "violence"), ("cyber", "hate", "violence")])
def test_runtime_equals_merged(tiny_qwen, adapters, combo):
    ads = [adapters[d] for d in combo]
    vanilla = logprobs(tiny_qwen, tiny_qwen.hf_model)
    merged = logprobs(tiny_qwen, merged_profile(tiny_qwen, ads))
    runtime = logprobs(tiny_qwen, runtime_profile(tiny_qwen, ads))
    torch.testing.assert_close(runtime, merged, atol=1e-4, rtol=1e-4)
    assert (merged - vanilla).abs().max() > 1e-2  # the profile changes the model
    # the caller's model is untouched
    torch.testing.assert_close(logprobs(tiny_qwen, tiny_qwen.hf_model), vanilla, atol=0, rtol=0)


def test_runtime_profile_uses_every_adapter(tiny_qwen, adapters):
    """Several active adapters, not just the last one loaded."""
    both = logprobs(tiny_qwen, runtime_profile(tiny_qwen, [adapters["cyber"], adapters["hate"]]))
    only_hate = logprobs(tiny_qwen, runtime_profile(tiny_qwen, [adapters["hate"]]))
    only_cyber = logprobs(tiny_qwen, runtime_profile(tiny_qwen, [adapters["cyber"]]))
    assert (both - only_hate).abs().max() > 1e-2 and (both - only_cyber).abs().max() > 1e-2


def test_runtime_profile_from_folders(tiny_qwen, adapters, tmp_path):
    folders = [adapters[d].save(tmp_path / d) for d in ("cyber", "hate")]
    from_disk = logprobs(tiny_qwen, runtime_profile(tiny_qwen, folders))
    merged = logprobs(tiny_qwen, merged_profile(tiny_qwen, [adapters["cyber"], adapters["hate"]]))
    torch.testing.assert_close(from_disk, merged, atol=1e-4, rtol=1e-4)


def test_sum_over_different_blocks_equals_one_by_one(tiny_qwen, adapters):
    a, b = adapters["cyber"], adapters["hate"]
    assert a.layer_index != b.layer_index
    together = merged_profile(tiny_qwen, [a, b])
    first = merged_profile(tiny_qwen, [a])
    # applying b on top of "base + a" (in place, restored afterwards) equals the merged sum
    with adapters_applied(tiny_qwen, [a]):
        with adapters_applied(tiny_qwen, [b]):
            one_by_one = logprobs(tiny_qwen, tiny_qwen.hf_model)
    torch.testing.assert_close(logprobs(tiny_qwen, together), one_by_one, atol=1e-5, rtol=1e-5)
    # disjoint modules: each adapted weight equals the one of its single-adapter profile
    for name in a.module_names:
        torch.testing.assert_close(together.get_submodule(name).weight, first.get_submodule(name).weight)
    assert not set(a.module_names) & set(b.module_names)
    assert set(sum_deltas([a, b])) == set(a.module_names) | set(b.module_names)


def test_same_block_deltas_add(tiny_qwen, adapters):
    h, v = adapters["hate"], adapters["violence"]
    merged = merged_profile(tiny_qwen, [h, v])
    base = merged_profile(tiny_qwen, [])
    for name in h.module_names:
        want = base.get_submodule(name).weight + h.deltas()[name] + v.deltas()[name]
        torch.testing.assert_close(merged.get_submodule(name).weight, want)


def test_composition_weight_scales_each_delta(tiny_qwen, adapters):
    """``base + w·ΣΔW`` for two or more domains; a single domain always gets its adapter as baked."""
    h, v = adapters["hate"], adapters["violence"]
    chosen = profile_adapters(Profile(("hate", "violence")), adapters, compose_weight=0.75)
    assert [a.meta["composition_weight"] for a in chosen] == [0.75, 0.75]
    merged = merged_profile(tiny_qwen, chosen)
    base = merged_profile(tiny_qwen, [])
    for name in h.module_names:
        want = base.get_submodule(name).weight + 0.75 * (h.deltas()[name] + v.deltas()[name])
        torch.testing.assert_close(merged.get_submodule(name).weight, want)
    # run-time composition of the weighted adapters (peft, scaled alpha) gives the merged logits
    torch.testing.assert_close(logprobs(tiny_qwen, runtime_profile(tiny_qwen, chosen)),
                               logprobs(tiny_qwen, merged), atol=1e-4, rtol=1e-4)
    # the weight changes the profile; the caller's adapters are untouched
    plain_sum = profile_adapters(Profile(("hate", "violence")), adapters, compose_weight=1.0)
    assert plain_sum == [h, v]
    plain = logprobs(tiny_qwen, merged_profile(tiny_qwen, plain_sum))
    assert (plain - logprobs(tiny_qwen, merged)).abs().max() > 1e-3
    assert "composition_weight" not in h.meta and h.alpha == 16.0
    # a single-domain profile ignores the weight
    assert profile_adapters(Profile(("hate",)), adapters, compose_weight=0.5) == [h]
    assert weighted_adapter(h, 1.0) is h


def test_composition_weight_survives_save_and_load(tiny_qwen, adapters, tmp_path):
    from palette_lens.adapters.baked import load_adapter

    w = weighted_adapter(adapters["cyber"], 0.5)
    back = load_adapter(w.save(tmp_path / "w"), tiny_qwen)
    assert back.meta["composition_weight"] == 0.5
    for name, delta in w.deltas().items():
        torch.testing.assert_close(back.deltas()[name], 0.5 * adapters["cyber"].deltas()[name])
        torch.testing.assert_close(back.deltas()[name], delta)


@pytest.mark.parametrize("bad", [0, -1, 2.5, float("nan"), float("inf"), "x"])
def test_composition_weight_rejects_bad_values(adapters, bad):
    with pytest.raises(PaletteError, match="composition weight"):
        profile_adapters(Profile(("hate", "violence")), adapters, compose_weight=bad)


def test_interference(tiny_qwen, adapters):
    rows = {(r["a"], r["b"]): r for r in interference(list(adapters.values()))}
    assert rows[("cyber", "hate")]["shared_modules"] == 0 and rows[("cyber", "hate")]["cosine"] is None
    same = rows[("hate", "violence")]
    assert same["shared_modules"] == len(adapters["hate"].module_names)
    assert -1.0 <= same["cosine"] <= 1.0 and abs(same["cosine"]) < 0.5  # independent random deltas
    self_rows = interference([adapters["hate"], adapters["hate"]])
    assert self_rows[0]["cosine"] == pytest.approx(1.0)
    assert self_rows[0]["direction_cosine"] == pytest.approx(1.0)


def test_leakage_matrix():
    rows, cols, m = leakage_matrix({"a": {"x": 0.1, "y": 0.9}, "b": {"x": 1.0}}, ["x", "y"])
    assert rows == ["a", "b"] and cols == ["x", "y"] and m == [[0.1, 0.9], [1.0, None]]


def test_export_loads_as_plain_hf_model(tiny_qwen, adapters, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ads = [adapters["cyber"], adapters["hate"]]
    folder = export_profile(tiny_qwen, ads, tmp_path / "profile")
    assert (folder / "config.json").is_file() and (folder / "palette_profile.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    torch.testing.assert_close(logprobs(tiny_qwen, loaded), logprobs(tiny_qwen, merged_profile(tiny_qwen, ads)),
                               atol=1e-5, rtol=1e-5)


def test_adapter_for_another_model_is_refused(tiny_qwen, tiny_llama, adapters):
    with pytest.raises(AdapterMismatchError):
        runtime_profile(tiny_llama, [adapters["cyber"]])
