"""A profile as one gated model on a tiny model: exact against the merged profile, the base model and itself."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import TOPICS, random_adapter, toy_prompts

from palette_lens.compose.profiles import merged_profile, weighted_adapter
from palette_lens.errors import PaletteError
from palette_lens.gate.config import GateConfig
from palette_lens.gate.gated_profile import GatedProfile
from palette_lens.gate.training import fit_gate
from palette_lens.models.copies import plain_hf_model

ATOL = 2e-4  # float32: the unmerged LoRA path and W + ΔW differ by rounding only (measured up to 6e-5 here)


@pytest.fixture(scope="module")
def setup(tiny_qwen):
    prompts = toy_prompts(TOPICS, 16)
    cyber = random_adapter(tiny_qwen, layer_index=2, seed=1, domain="cyber", scale=0.6)
    violence = random_adapter(tiny_qwen, layer_index=2, seed=2, domain="violence", scale=0.6, rank=4)
    gate = fit_gate(tiny_qwen, prompts, ["cyber", "violence"], GateConfig(layer=1, segment_veto=None))
    single = fit_gate(tiny_qwen, prompts, ["cyber"], GateConfig(layer=1, segment_veto=None))
    texts = [p for d in ("cyber", "violence", "hate", "harmless") for p in prompts.part(d, "test")[:3]]
    return tiny_qwen, prompts, cyber, violence, gate, single, texts


def all_logits(model, hf, texts):
    enc = model.encode(texts)
    with torch.no_grad():
        return hf(**enc, use_cache=False).logits.float()


def test_an_open_gate_gives_the_merged_profile(setup):
    model, _, cyber, violence, gate, single, texts = setup
    opened = GatedProfile(model, [cyber], replace(single, threshold=-1.0))
    merged = merged_profile(model, [cyber])
    assert torch.allclose(opened.logits(texts), all_logits(model, merged, texts), atol=ATOL)
    assert bool(opened.decision.opened.all())
    assert opened.generate(texts, max_new_tokens=8) == model.generate(texts, max_new_tokens=8, model=merged)
    pair = GatedProfile(model, [cyber, violence], replace(gate, threshold=-1.0), routing="merged")
    merged_pair = merged_profile(model, [weighted_adapter(cyber, 0.85), weighted_adapter(violence, 0.85)])
    assert torch.allclose(pair.logits(texts), all_logits(model, merged_pair, texts), atol=ATOL)


def test_a_shut_gate_gives_the_base_model_exactly(setup):
    model, _, cyber, violence, gate, _, texts = setup
    shut = GatedProfile(model, [cyber, violence], replace(gate, threshold=1.0))
    assert torch.equal(shut.logits(texts), all_logits(model, plain_hf_model(model), texts))
    assert not bool(shut.decision.opened.any())
    assert shut.generate(texts, max_new_tokens=8) == model.generate(texts, max_new_tokens=8)


def test_a_mixed_batch_equals_its_prompts_one_by_one(setup):
    model, _, cyber, violence, gate, _, texts = setup
    profile = GatedProfile(model, [cyber, violence], gate)
    batch = profile.logits(texts)[:, -1]
    opened = profile.decision.opened.tolist()
    assert any(opened) and not all(opened), "the test needs prompts the gate opens for and prompts it does not"
    assert opened == gate.opens(model, texts)
    for i, text in enumerate(texts):
        assert torch.allclose(profile.logits([text])[0, -1], batch[i], atol=ATOL)
        assert bool(profile.decision.opened[0]) == opened[i]
    together = profile.generate(texts, max_new_tokens=8, batch_size=5)  # sorted by length, in three batches
    assert profile.decision.opened.tolist() == opened  # back in the caller's order
    assert together == [profile.generate([t], max_new_tokens=8)[0] for t in texts]


def test_a_routed_pair_gives_each_prompt_the_single_profile_the_gate_chose(setup):
    model, _, cyber, violence, gate, _, texts = setup
    profile = GatedProfile(model, [cyber, violence], gate)
    last = profile.logits(texts)[:, -1]
    scale = profile.decision.scale
    assert set(scale.sum(-1).tolist()) <= {0.0, 1.0}  # one domain's delta at full weight, or none
    chosen = {0: merged_profile(model, [cyber]), 1: merged_profile(model, [violence])}
    base = plain_hf_model(model)
    routed_to = []
    for i, text in enumerate(texts):
        hf = chosen[int(scale[i].argmax())] if scale[i].any() else base
        routed_to.append(int(scale[i].argmax()) if scale[i].any() else None)
        assert torch.allclose(all_logits(model, hf, [text])[0, -1], last[i], atol=ATOL), text
    assert {0, 1} <= set(routed_to), f"the test needs prompts routed to each domain: {routed_to}"


def test_a_segment_veto_keeps_the_prompts_it_vetoes_shut(setup, monkeypatch):
    model, _, cyber, _, _, single, texts = setup
    gate = replace(single, threshold=-1.0, segment_veto=0.5)
    monkeypatch.setattr(type(gate), "vetoed", lambda self, m, ps, batch_size=32: [p == texts[0] for p in ps])
    profile = GatedProfile(model, [cyber], gate)
    profile.logits(texts[:3])
    assert profile.decision.opened.tolist() == [False, True, True]
    # outside generate/logits the veto is forgotten: a plain forward call opens for all three
    enc = model.encode(texts[:3])
    profile(**enc, use_cache=False)
    assert profile.decision.opened.tolist() == [True, True, True]


def test_the_callers_model_is_untouched_and_bad_profiles_fail_first(setup):
    model, _, cyber, violence, gate, single, texts = setup
    before = all_logits(model, model.hf_model, texts)
    GatedProfile(model, [cyber, violence], replace(gate, threshold=-1.0)).logits(texts)
    assert torch.equal(all_logits(model, model.hf_model, texts), before)
    early = random_adapter(model, layer_index=0, seed=3, domain="cyber")
    with pytest.raises(PaletteError, match="before the gate's layer 1"):
        GatedProfile(model, [early], single)
    with pytest.raises(PaletteError, match="the gate opens for cyber, but the adapters are for cyber\\+violence"):
        GatedProfile(model, [cyber, violence], single)
    binary = replace(gate, classes=(), weight=gate.weight[0], bias=0.0, segment_veto=None)
    with pytest.raises(PaletteError, match="needs a gate with a domain probe"):
        GatedProfile(model, [cyber, violence], binary)


def test_the_router_sends_each_prompt_to_the_profile_whose_gate_opens_most(setup, tmp_path):
    from palette_lens.compose.export import export_profile
    from palette_lens.gate.router import Router

    model, _, cyber, violence, gate, single, texts = setup
    router = Router({"cyber": single, "cyber+violence": gate})
    routes = router.route(model, texts)
    p_single = single.probability(single.features(model, texts))
    p_pair = gate.probability(gate.features(model, texts))
    for i, route in enumerate(routes):
        open_single, open_pair = bool(p_single[i] > single.threshold), bool(p_pair[i] > gate.threshold)
        if not (open_single or open_pair):
            assert route is None
        elif open_single and (not open_pair or p_single[i] >= p_pair[i]):
            assert route == "cyber"
        else:
            assert route == "cyber+violence"
    assert None in routes and {"cyber", "cyber+violence"} & set(routes)
    folders = [export_profile(model, [cyber], tmp_path / "cyber", gate=single),
               export_profile(model, [weighted_adapter(cyber, 0.85), weighted_adapter(violence, 0.85)],
                              tmp_path / "pair", gate=gate)]
    assert Router.from_exports(folders, model).route(model, texts) == routes
    with pytest.raises(PaletteError, match="not a palette-lens export"):
        Router.from_exports([tmp_path], model)


def test_decide_runs_only_to_the_gate_and_agrees_with_the_prefill(setup):
    model, _, cyber, violence, gate, _, texts = setup
    profile = GatedProfile(model, [cyber, violence], gate)
    reached = []
    last = profile.hf_model.get_submodule(model.decoder_layer_prefix(model.n_layers - 1))
    handle = last.register_forward_pre_hook(lambda *_: reached.append(1))
    try:
        decided = profile.decide(texts, batch_size=5)
    finally:
        handle.remove()
    assert not reached, "decide() ran layers after the gate"
    profile.logits(texts)
    assert decided.opened.tolist() == profile.decision.opened.tolist() == gate.opens(model, texts)
    assert torch.equal(decided.scale, profile.decision.scale.cpu())
    assert torch.allclose(decided.probability, profile.decision.probability, atol=1e-5)


def test_a_prompt_followed_by_part_of_its_reply_keeps_the_prompts_decision(setup):
    """A second generation phase or a teacher-forced check feeds prompt + reply tokens as one sequence: the gate
    still reads the prompt's end, so two-phase generation equals one-phase and logits equal the chosen profile's."""
    from palette_lens.generation.greedy import generate_completions

    model, _, cyber, violence, gate, _, texts = setup
    profile = GatedProfile(model, [cyber, violence], gate)
    one = generate_completions(model, texts, lm=profile.hf_model, max_new_tokens=10, first_phase=0)
    two = generate_completions(model, texts, lm=profile.hf_model, max_new_tokens=10, first_phase=3)
    assert one.token_ids == two.token_ids
    scale = profile.decide(texts).scale
    chosen = {0: merged_profile(model, [cyber]), 1: merged_profile(model, [violence])}
    for i, text in enumerate(texts):
        ids = model.encode([text])["input_ids"][0].tolist() + one.token_ids[i][:6]
        enc = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        hf = chosen[int(scale[i].argmax())] if scale[i].any() else plain_hf_model(model)
        with torch.no_grad():
            want = hf(**enc, use_cache=False).logits.float()
            got = profile(**enc, use_cache=False).logits.float()
        assert torch.allclose(got, want, atol=ATOL), text
