"""Single-block baking: cached block inputs, the block run alone, targets, and a LoRA trained on one block."""

from __future__ import annotations

from dataclasses import replace

import helpers
import pytest
import torch
from helpers import toy_direction

from palette_lens.bake.config import BakeConfig
from palette_lens.bake.examples import validation_metrics
from palette_lens.bake.targets import (
    block_targets,
    hard_negative_weights,
    shift_along,
    token_losses,
    token_mask,
)
from palette_lens.bake.train import bake_direction
from palette_lens.models.blocks import (
    capture_block_inputs,
    causal_mask_4d,
    plain_decoder_layer,
    position_ids_from_mask,
    prefix_length,
    rotary_embedding,
    run_block,
    run_suffix,
)
from palette_lens.models.residuals import collect_residuals
from palette_lens.search.direction import Direction

PROMPTS = ["How do I write a program?", "hello there, write a poem about the sea", "x", "Explain how the heart pumps"]


@pytest.fixture(scope="module")
def toy_prompts():
    """Prompts whose words differ by domain (so a tiny random model separates them a little)."""
    return helpers.toy_prompts(helpers.TOPICS, 30, length=(3, 8))


@pytest.fixture(scope="module")
def baked(tiny_qwen, toy_prompts):
    direction = toy_direction(tiny_qwen, toy_prompts)
    before = {k: v.detach().clone() for k, v in tiny_qwen.hf_model.state_dict().items()}
    result = bake_direction(tiny_qwen, direction, toy_prompts, BakeConfig(steps=60, eval_every=20, batch_size=8, lr=3e-3),
                  progress=False)
    return direction, result, before


# ---------------------------------------------------------------------- block inputs
@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama"])
def test_captured_inputs_equal_hf_hidden_states(request, fixture):
    model = request.getfixturevalue(fixture)
    enc = model.encode(PROMPTS)
    with torch.no_grad():
        hidden = model.hf_model(**enc, output_hidden_states=True).hidden_states
    inputs = capture_block_inputs(model, PROMPTS, 1, batch_size=3, desc=None)
    assert inputs.prompts == PROMPTS
    for j in range(len(PROMPTS)):
        keep = enc["attention_mask"][j].bool()
        torch.testing.assert_close(inputs.hidden_in[j], hidden[1][j, keep].float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(inputs.hidden_out[j], hidden[2][j, keep].float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama"])
def test_single_block_forward_equals_next_hidden_state(request, fixture):
    model = request.getfixturevalue(fixture)
    enc = model.encode(PROMPTS)
    with torch.no_grad():
        hidden = model.hf_model(**enc, output_hidden_states=True).hidden_states
    layer = plain_decoder_layer(model, 1)
    mask = enc["attention_mask"]
    with torch.no_grad():
        out = run_block(layer, rotary_embedding(model), hidden[1], mask)
    real = mask.bool()
    rel = (out[real] - hidden[2][real]).norm() / hidden[2][real].norm()
    assert rel < 1e-5
    # The collated cache gives the same thing (different padding: only real tokens compare).
    inputs = capture_block_inputs(model, PROMPTS, 1, desc=None)
    h_in, m, h_out = inputs.collate(range(len(PROMPTS)))
    with torch.no_grad():
        again = run_block(layer, rotary_embedding(model), h_in, m)
    torch.testing.assert_close(again[m.bool()], h_out[m.bool()], atol=1e-5, rtol=1e-4)


def test_plain_layer_is_a_copy(tiny_qwen):
    layer = plain_decoder_layer(tiny_qwen, 0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)
    # the model's own weights did not move
    again = plain_decoder_layer(tiny_qwen, 0)
    assert not torch.equal(next(layer.parameters()), next(again.parameters()))
    assert "_original_component" not in " ".join(n for n, _ in layer.named_modules())


def test_run_suffix_equals_last_logits(tiny_qwen):
    inputs = capture_block_inputs(tiny_qwen, PROMPTS, 1, desc=None)
    torch.testing.assert_close(run_suffix(tiny_qwen, inputs), tiny_qwen.last_logits(PROMPTS), atol=1e-4, rtol=1e-4)


def test_masks_and_positions():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    m4 = causal_mask_4d(mask, torch.float32)
    assert m4.shape == (2, 1, 4, 4)
    assert m4[0, 0, 3, 1] < -1e30  # padded key
    assert m4[0, 0, 3, 2] == 0 and m4[0, 0, 2, 3] < -1e30  # causal
    assert torch.isfinite(m4).all()


def test_prefix_length_is_template_before_user_text(tiny_qwen):
    n = prefix_length(tiny_qwen)
    ids_a = tiny_qwen.encode(["alpha beta"])["input_ids"][0].tolist()
    ids_b = tiny_qwen.encode(["gamma"])["input_ids"][0].tolist()
    assert n >= 1 and ids_a[:n] == ids_b[:n]
    assert tiny_qwen.tokenizer.decode(ids_a[:n]).endswith("user\n")


# ---------------------------------------------------------------------- targets and losses
def test_block_targets_scale_the_projection():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 16)
    unit = torch.nn.functional.normalize(torch.randn(16), dim=0)
    is_t = torch.tensor([True, False, False])
    neutral = block_targets(h, unit, is_t, 2.5, "neutral")
    torch.testing.assert_close(neutral @ unit, torch.stack([(1 - 2.5) * (h[0] @ unit), h[1] @ unit, h[2] @ unit]))
    torch.testing.assert_close(neutral[1:], h[1:])
    reinforce = block_targets(h, unit, is_t, 2.5, "reinforce")
    torch.testing.assert_close(reinforce[1:] @ unit, 3.5 * (h[1:] @ unit))
    # orthogonal part untouched
    ortho = lambda x: x - (x @ unit).unsqueeze(-1) * unit  # noqa: E731
    torch.testing.assert_close(ortho(neutral), ortho(h), atol=1e-5, rtol=1e-5)
    # a margin on non-target harmful rows only (row 1), harmless row 2 stays neutral
    margin = block_targets(h, unit, is_t, 2.5, "neutral", 0.5, torch.tensor([False, True, False]))
    torch.testing.assert_close(margin[0], neutral[0])
    torch.testing.assert_close(margin[1] @ unit, 1.5 * (h[1] @ unit))
    torch.testing.assert_close(margin[2], h[2])
    with pytest.raises(ValueError, match="is_other"):
        block_targets(h, unit, is_t, 2.5, "neutral", 0.5)


def test_selectivity_under_a_margin_does_not_reward_over_refusal():
    vocab, refusal = 6, [0]
    base = torch.log_softmax(torch.zeros(5, vocab), -1)  # every prompt: refusal mass 1/6
    more = base.clone()
    more[1:3] = torch.log_softmax(torch.tensor([3.0, 0, 0, 0, 0, 0]), -1)  # rows 1-2 refuse more than vanilla
    groups = {"target": slice(0, 1), "chem": slice(1, 2), "hate": slice(2, 3), "harmless": slice(3, 4),
              "borderline": slice(4, 5)}
    plain = validation_metrics(more, base, groups, refusal)
    margin = validation_metrics(more, base, groups, refusal, margin=True)
    assert plain["retain_mean"] > 1.5 and margin["retain_mean"] == plain["retain_mean"]
    assert margin["selectivity"] < plain["selectivity"]
    same = validation_metrics(base, base, groups, refusal)
    assert validation_metrics(base, base, groups, refusal, margin=True)["selectivity"] == same["selectivity"]


def test_losses_zero_at_target_and_positive_elsewhere():
    torch.manual_seed(0)
    t = torch.randn(2, 4, 8)
    for kind in ("cosine", "rel_mse"):
        assert token_losses(t, t, kind).abs().max() < 1e-5
        assert (token_losses(t + torch.randn_like(t), t, kind) > 0).all()
    assert token_losses(2 * t, t, "cosine").abs().max() < 1e-5  # cosine ignores the norm


def test_shift_along_scales_the_projection_on_marked_tokens_only():
    torch.manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(8), dim=0)
    h = torch.randn(2, 3, 8)
    tokens = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    out = shift_along(h, unit, torch.tensor([-1.0, 0.5]), tokens)
    assert torch.equal(out[0, 0], h[0, 0])
    assert (out[0, 1:] @ unit).abs().max() < 1e-5  # c = −1 removes the component
    torch.testing.assert_close(out[1] @ unit, 1.5 * (h[1] @ unit))
    torch.testing.assert_close(out - (out @ unit).unsqueeze(-1) * unit, h - (h @ unit).unsqueeze(-1) * unit)


def test_shifted_inputs_get_frozen_block_targets(tiny_qwen, toy_prompts):
    from palette_lens.bake.batches import shifted_inputs
    from palette_lens.bake.lora_block import LoraBlock
    from palette_lens.models.tiny import random_lora_factors

    prompts = toy_prompts.part("cyber", "train")[:4] + toy_prompts.part("harmless", "train")[:2]
    inputs = capture_block_inputs(tiny_qwen, prompts, 1, desc=None)
    h_in, mask, h_out = inputs.collate(range(len(prompts)))
    block = LoraBlock(tiny_qwen, 1, 4, 8.0, 0)
    block.load_factors(*random_lora_factors(tiny_qwen, 1, torch.Generator().manual_seed(0), rank=4))
    unit = torch.nn.functional.normalize(torch.randn(h_in.shape[-1], generator=torch.Generator().manual_seed(1)), dim=0)
    harmful = torch.tensor([True] * 4 + [False] * 2)
    cfg = BakeConfig(input_shift=1.0, input_shift_range=(-1.0, -1.0))
    rotary = rotary_embedding(tiny_qwen)
    new_in, new_out = shifted_inputs(block, rotary, h_in, mask, h_out, unit, harmful, inputs.n_prefix, cfg,
                                      torch.Generator().manual_seed(0))
    user = token_mask(mask, inputs.n_prefix, 0, "user").bool()
    assert (new_in[:4][user[:4]] @ unit).abs().max() < 1e-4  # refusal component removed on harmful rows
    assert torch.equal(new_in[4:], h_in[4:]) and torch.equal(new_out[4:], h_out[4:])
    plain = plain_decoder_layer(tiny_qwen, 1)
    with torch.no_grad():
        want = run_block(plain, rotary, new_in[:4], mask[:4])  # the frozen block, not the adapted one
    real = mask[:4].bool()
    torch.testing.assert_close(new_out[:4][real], want[real], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(new_out[:4][real], h_out[:4][real])


def test_token_mask_scopes():
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert token_mask(mask, 2, 2, "user").tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert token_mask(mask, 2, 2, "post").tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert token_mask(mask, 2, 2, "all").tolist() == mask.float().tolist()


def test_hard_negatives_are_the_closest_non_targets():
    target = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    others = torch.tensor([[0.9, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    outputs = torch.cat([target, others])
    is_t = torch.tensor([True, True, False, False, False, False])
    w = hard_negative_weights(outputs, is_t, 0.25, 4.0)
    assert w.tolist() == [1.0, 1.0, 4.0, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------------- training on a tiny model
def test_bake_changes_only_block_l_minus_1(tiny_qwen, baked):
    direction, result, before = baked
    adapter = result.adapter
    assert adapter.layer_index == direction.layer - 1 == 1
    prefix = tiny_qwen.decoder_layer_prefix(1) + "."
    assert adapter.module_names and all(n.startswith(prefix) for n in adapter.module_names)
    assert {n.rsplit(".", 1)[-1] for n in adapter.module_names} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapter.delta_norm() > 0
    # the caller's model is untouched
    after = tiny_qwen.hf_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bake_moves_target_projection_more_than_others(tiny_qwen, toy_prompts, baked):
    from palette_lens.adapters.apply import adapters_applied

    direction, result, _ = baked
    unit = direction.unit
    groups = {d: toy_prompts.part(d, "train") for d in ("cyber", "violence", "harmless")}

    def proj(d):
        return collect_residuals(tiny_qwen, groups[d], layers=[2], positions=[-1], desc=None).at(2, -1) @ unit

    base = {d: proj(d) for d in groups}
    with adapters_applied(tiny_qwen, [result.adapter]):
        new = {d: proj(d) for d in groups}
    drop = {d: float((base[d] - new[d]).mean()) for d in groups}
    assert drop["cyber"] > 0
    assert drop["cyber"] > 3 * abs(drop["harmless"])
    assert drop["cyber"] > 2 * abs(drop["violence"])


def test_bake_result_has_metadata_and_history(tiny_qwen, baked):
    direction, result, _ = baked
    meta = result.adapter.meta
    assert meta["base_fingerprint"] == tiny_qwen.fingerprint
    assert meta["layer"] == direction.layer and meta["position"] == -1 and meta["domain"] == "cyber"
    assert meta["scale"] == 2.5 and meta["target_mode"] == "neutral" and meta["loss"] == "cosine"
    assert set(meta["data_hashes"]) == {"target", "all"}
    assert [h["step"] for h in result.history] == list(range(1, 61))
    assert sum("val" in h for h in result.history) == 3
    assert 1 <= meta["best_step"] <= 60
    assert result.timings_s["total"] >= result.timings_s["train"] > 0


def test_bake_is_deterministic(tiny_qwen, toy_prompts):
    direction = toy_direction(tiny_qwen, toy_prompts)
    cfg = BakeConfig(steps=6, eval_every=0, batch_size=4)
    a = bake_direction(tiny_qwen, direction, toy_prompts, cfg, progress=False).adapter
    b = bake_direction(tiny_qwen, direction, toy_prompts, cfg, progress=False).adapter
    assert a.module_names == b.module_names and a.module_names
    for n in a.module_names:
        assert torch.equal(a.lora_A[n], b.lora_A[n]) and torch.equal(a.lora_B[n], b.lora_B[n])


def test_a_second_bake_at_the_same_block_captures_only_its_new_prompts(tiny_qwen, toy_prompts, monkeypatch):
    from palette_lens.bake import examples as bake_data  # BakeData.build looks capture_block_inputs up there

    cfg = BakeConfig(steps=4, eval_every=0, batch_size=4)
    first = bake_direction(tiny_qwen, toy_direction(tiny_qwen, toy_prompts), toy_prompts, replace(cfg, val_per_domain=1),
                 progress=False)  # one validation prompt per other domain: the second bake needs more
    captured: list[str] = []
    real = bake_data.capture_block_inputs

    def counting(model, prompts, layer_index, **kw):
        captured.extend(prompts)
        return real(model, prompts, layer_index, **kw)

    monkeypatch.setattr(bake_data, "capture_block_inputs", counting)
    violence = toy_direction(tiny_qwen, toy_prompts, domain="violence")
    second = bake_direction(tiny_qwen, violence, toy_prompts, cfg, inputs=first.inputs, progress=False)
    have = set(first.inputs.prompts)
    assert captured and not have & set(captured)  # only prompts the first bake had not captured
    val = {p for d in toy_prompts.domains for p in toy_prompts.part(d, "val")}
    assert set(captured) <= val  # the validation prompts the first bake (1 per other domain) did not use
    kept = first.inputs.prompts[0]
    assert second.inputs.hidden_in[second.inputs.index(kept)] is first.inputs.hidden_in[0]  # reused as is
    fresh = bake_direction(tiny_qwen, violence, toy_prompts, cfg, progress=False)
    for n in fresh.adapter.module_names:  # the same training up to float rounding of the batched capture
        torch.testing.assert_close(second.adapter.lora_B[n], fresh.adapter.lora_B[n], atol=1e-4, rtol=1e-3)


def test_margin_retry_bakes_again_only_when_a_domain_loses_refusal(tiny_qwen, toy_prompts):
    direction = toy_direction(tiny_qwen, toy_prompts)
    cfg = BakeConfig(steps=6, eval_every=0, batch_size=4, margin_retry=0.0)  # 0: the option off
    plain = bake_direction(tiny_qwen, direction, toy_prompts, cfg, progress=False)
    assert "margin_retry" not in plain.adapter.meta
    # threshold 0 and no composition margin: never below it, so no second bake and the same adapter as without
    # the option
    never = bake_direction(tiny_qwen, direction, toy_prompts,
                 replace(cfg, margin_retry=0.5, margin_retry_below=0.0, margin_compose=0.0), progress=False)
    assert "margin_retry" not in never.adapter.meta
    for n in plain.adapter.module_names:
        assert torch.equal(never.adapter.lora_B[n], plain.adapter.lora_B[n])
    # threshold above any retention: the margin bake runs; which one is kept follows the rule
    retried = bake_direction(tiny_qwen, direction, toy_prompts,
                   replace(cfg, margin_retry=0.5, margin_retry_below=10.0, margin_retry_max_target=1e6),
                   progress=False)
    record = retried.adapter.meta["margin_retry"]
    # the margin bake also weighs borderline prompts 1:1 (margin_retry_borderline)
    margin = bake_direction(tiny_qwen, direction, toy_prompts, replace(cfg, other_scale=0.5, mix=(*cfg.mix[:3], 1.0)),
                  progress=False)
    assert record["plain"]["retain_min"] == pytest.approx(plain.val["retain_min"])
    assert record["margin"]["retain_min"] == pytest.approx(margin.val["retain_min"])
    expect = margin if margin.val["retain_min"] > plain.val["retain_min"] else plain
    assert record["kept"] == ("margin" if expect is margin else "plain")
    for n in expect.adapter.module_names:
        torch.testing.assert_close(retried.adapter.lora_B[n], expect.adapter.lora_B[n], atol=1e-5, rtol=1e-4)
    assert retried.adapter.meta["config"]["other_scale"] == (0.5 if expect is margin else 0.0)
    assert retried.adapter.meta["config"]["mix"][3] == (1.0 if expect is margin else cfg.mix[3])
    # a margin bake that no longer relaxes the target enough is never kept
    strict = bake_direction(tiny_qwen, direction, toy_prompts,
                  replace(cfg, margin_retry=0.5, margin_retry_below=10.0, margin_retry_max_target=0.0),
                  progress=False)
    assert strict.adapter.meta["margin_retry"]["kept"] == "plain"


def test_retry_margin_is_the_fallback_below_the_threshold_and_the_composition_margin_above():
    from palette_lens.bake.margin import retry_margin

    cfg = BakeConfig()
    assert retry_margin({"retain_min": 0.79}, cfg) == cfg.margin_retry == 0.5
    assert retry_margin({"retain_min": 0.8}, cfg) == cfg.margin_compose == 0.25
    assert retry_margin({"retain_min": 0.95}, replace(cfg, margin_compose=0.0)) == 0.0
    assert retry_margin({"retain_min": 0.5}, replace(cfg, margin_retry=0.0)) == 0.0  # 0: the whole rule off
    assert retry_margin({"retain_min": 0.5}, replace(cfg, other_scale=0.25)) == 0.0  # a margin bake already


def test_composition_margin_bakes_again_above_the_threshold(tiny_qwen, toy_prompts):
    direction = toy_direction(tiny_qwen, toy_prompts)
    cfg = BakeConfig(steps=6, eval_every=0, batch_size=4, margin_retry_below=0.0, margin_retry_max_target=1e6)
    plain = bake_direction(tiny_qwen, direction, toy_prompts, replace(cfg, margin_retry=0.0), progress=False)
    composed = bake_direction(tiny_qwen, direction, toy_prompts, cfg, progress=False)
    record = composed.adapter.meta["margin_retry"]
    assert record["margin_scale"] == cfg.margin_compose == 0.25
    assert record["plain"]["retain_min"] == pytest.approx(plain.val["retain_min"])
    margin = bake_direction(tiny_qwen, direction, toy_prompts, replace(cfg, other_scale=0.25, mix=(*cfg.mix[:3], 1.0)),
                  progress=False)
    assert record["margin"]["retain_min"] == pytest.approx(margin.val["retain_min"])
    kept = "margin" if margin.val["retain_min"] > plain.val["retain_min"] else "plain"
    assert record["kept"] == kept
    assert composed.adapter.meta["config"]["other_scale"] == (0.25 if kept == "margin" else 0.0)


def test_generated_selectivity_rewards_relaxing_the_target_and_keeping_the_rest():
    from palette_lens.bake.generation_check import generated_selectivity

    base = {"target": 1.0, "chem": 1.0, "bio": 0.5, "harmless": 0.0, "borderline": 0.25}
    good = generated_selectivity({"target": 0.0, "chem": 1.0, "bio": 0.5, "harmless": 0.0, "borderline": 0.25}, base)
    assert good["kept_mean"] == 1.0 and good["kept_worst"] == 1.0 and good["selectivity"] == pytest.approx(1.0)
    leaky = generated_selectivity({"target": 0.0, "chem": 0.5, "bio": 0.5, "harmless": 0.0, "borderline": 0.25}, base)
    assert leaky["kept_worst"] == 0.5 and leaky["selectivity"] < good["selectivity"]
    stiff = generated_selectivity({"target": 0.5, "chem": 1.0, "bio": 0.5, "harmless": 0.0, "borderline": 0.25}, base)
    assert stiff["selectivity"] == pytest.approx(0.5)
    over = generated_selectivity({"target": 0.0, "chem": 1.0, "bio": 1.0, "harmless": 0.25, "borderline": 0.5}, base)
    assert over["kept_mean"] == 1.0 and over["selectivity"] == pytest.approx(0.5)  # over-refusal costs, extra refusal earns nothing


def test_generation_check_keeps_the_checkpoint_that_generates_best(tiny_qwen, toy_prompts):
    direction = toy_direction(tiny_qwen, toy_prompts)
    cfg = BakeConfig(steps=8, eval_every=2, batch_size=4, margin_retry=0.0)
    plain = bake_direction(tiny_qwen, direction, toy_prompts, cfg, progress=False)
    checked = bake_direction(tiny_qwen, direction, toy_prompts, replace(cfg, generation_check=3), progress=False)
    record = checked.adapter.meta["metrics"]["val_generation"]
    assert len(record["steps"]) == len(record["candidates"]) == 3
    assert record["steps"][0] == plain.adapter.meta["best_step"]  # the shortlist starts at the first-token pick
    scores = [c["selectivity"] for c in record["candidates"]]
    assert record["kept_step"] == record["steps"][scores.index(max(scores))] == checked.adapter.meta["best_step"]
    assert set(record["vanilla"]) == set(record["candidates"][0]["rates"]) >= {"target", "harmless", "violence"}
    # on the tiny model the shortlist generates alike (a tie), so the first-token pick is kept: the plain adapter
    assert record["kept_step"] == plain.adapter.meta["best_step"], record
    assert plain.adapter.module_names
    for n in plain.adapter.module_names:
        assert torch.equal(checked.adapter.lora_B[n], plain.adapter.lora_B[n])
    assert "val_generation" not in plain.adapter.meta["metrics"]


def test_bake_rejects_layer_zero_and_other_models(tiny_qwen, tiny_llama, toy_prompts):
    from palette_lens.errors import AdapterMismatchError, PaletteError

    d = toy_direction(tiny_qwen, toy_prompts)
    with pytest.raises(PaletteError, match="layer 0"):
        bake_direction(tiny_qwen, Direction(d.vector, 0, -1, "cyber"), toy_prompts, BakeConfig(steps=1), progress=False)
    with pytest.raises(AdapterMismatchError):
        bake_direction(tiny_llama, d, toy_prompts, BakeConfig(steps=1), progress=False)


# ---------------------------------------------------------------------- inspection
def test_inspection_reports_deltas_projections_and_completions(tiny_qwen, toy_prompts, baked):
    from palette_lens.bake.inspect import inspect_adapter

    direction, result, before = baked
    ins = inspect_adapter(tiny_qwen, result.adapter, toy_prompts, n_per_domain=4, n_completions=1, max_new_tokens=4)
    assert {m["name"] for m in ins.modules} == set(result.adapter.module_names)
    for m in ins.modules:
        assert m["norm"] > 0 and len(m["singular_values"]) == 8 and m["relative_norm"] > 0
        assert ("out_share_along_r" in m) == m["name"].endswith(("o_proj", "down_proj"))
        assert 0 <= m.get("r_in_column_space", 0) <= 1 + 1e-5
    rows = {r["domain"]: r for r in ins.table}
    assert set(rows) == set(toy_prompts.domains) and rows["cyber"]["role"] == "target"
    # the target's projection moves more than the harmless one
    assert rows["cyber"]["proj_before"] - rows["cyber"]["proj_after"] > abs(
        rows["harmless"]["proj_before"] - rows["harmless"]["proj_after"])
    assert len(ins.completions) == len(toy_prompts.domains)
    assert all(len(c["after"]) <= 160 for c in ins.completions)
    assert set(ins.figures) == {"deltas", "singular_values", "projections", "refusal_scores"}
    page = ins._repr_html_()
    assert "<table>" in page and "plotly" in page.lower()
    # the model is restored
    after = tiny_qwen.hf_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------- command line
def test_bake_command_writes_adapter_folder(tiny_qwen, toy_prompts, tmp_path, monkeypatch):
    import json as _json

    from palette_lens.adapters.baked import load_adapter
    from palette_lens.cli.app import main
    from palette_lens.models.copies import plain_hf_model

    model_dir = tmp_path / "model"
    plain_hf_model(tiny_qwen).save_pretrained(model_dir)
    tiny_qwen.tokenizer.save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "toy.jsonl", "w") as f:
        for d in toy_prompts.domains:
            for p in toy_prompts.prompts(d):
                f.write(_json.dumps({"prompt": p, "domain": d}) + "\n")
    monkeypatch.setenv("PALETTE_LENS_DATA", str(data_dir))
    direction = toy_direction(tiny_qwen, toy_prompts)
    direction = Direction(direction.vector, direction.layer, direction.position, "cyber")  # no fingerprint check
    direction.save(tmp_path / "dirs", "cyber")
    out = tmp_path / "out"
    config = tmp_path / "bake.toml"  # the research settings in --config; one old flag still works (deprecated)
    config.write_text("[bake]\ninput_shift = 0.5\nmargin_retry = 0\nmargin_compose = 0.125\ngeneration_check = 2\n")
    code = main(["bake", "--target", "cyber", "--model", str(model_dir), "--direction", str(tmp_path / "dirs" / "cyber.json"),
                 "--steps", "4", "--config", str(config), "--mix", "1,1,1,1", "--out", str(out)])
    assert code == 0
    folder = out / "adapters" / "cyber"
    assert (folder / "bake.json").is_file() and (folder / "inspect.html").is_file()
    echoed = _json.loads((folder / "bake.json").read_text())
    assert echoed["config_file"] == {"path": str(config), "bake": {"input_shift": 0.5, "margin_retry": 0.0,
                                                                  "margin_compose": 0.125, "generation_check": 2}}
    assert echoed["settings"]["margin_compose"] == 0.125 and echoed["settings"]["steps"] == 4
    adapter = load_adapter(folder)
    assert adapter.layer_index == 1 and adapter.meta["domain"] == "cyber"
    assert adapter.meta["config"]["input_shift"] == 0.5 and adapter.meta["config"]["margin_retry"] == 0.0
    assert adapter.meta["config"]["margin_compose"] == 0.125 and "margin_retry" not in adapter.meta  # rule off
    assert list(adapter.meta["config"]["mix"]) == [1.0, 1.0, 1.0, 1.0]
    assert adapter.meta["metrics"]["val_generation"]["kept_step"] == adapter.meta["best_step"]
    code = main(["bake", "--target", "cyber", "--model", str(model_dir), "--direction", str(tmp_path / "dirs" / "cyber.json"),
                 "--steps", "4", "--margin-retry", "0", "--refine", "--no-inspect", "--out", str(tmp_path / "refined")])
    refined = load_adapter(tmp_path / "refined" / "adapters" / "cyber")
    assert code == 0 and refined.rank == 2 * adapter.rank and refined.meta["refined"]["layer"] == adapter.layer
    # a wrong target is a one-line user error
    assert main(["bake", "--target", "nope", "--model", str(model_dir), "--out", str(out)]) == 2


# ---------------------------------------------------------------------- the bake's ceiling
def test_single_layer_scan_reads_the_edit_at_each_layer(tiny_qwen, toy_prompts):
    from palette_lens.bake.ceiling import single_layer_scan

    ids = [0, 1, 2]
    rows = single_layer_scan(tiny_qwen, toy_prompts, "cyber", layers=[0, 1, 2], n=6, refusal_ids=ids)
    assert [r["layer"] for r in rows] == [1, 2]  # layer 0 has no block before it to bake into
    base = rows[0]["p_base"]
    assert all(r["p_base"] == base and 0.0 <= r["p_target"] <= 1.0 for r in rows)
    assert all(abs(r["ratio"] - r["p_target"] / base) < 1e-9 for r in rows)
    # the edit changes the output at some layer (it is applied, not silently skipped)
    assert any(abs(r["p_target"] - base) > 1e-6 for r in rows)


# ---------------------------------------------------------------------- refinement round
def test_refine_searches_the_adapter_layer_and_stacks_both_rounds(tiny_qwen, toy_prompts, tmp_path):
    from palette_lens.adapters.apply import apply_adapters, merged_hf_model
    from palette_lens.adapters.baked import load_adapter
    from palette_lens.bake.refine import refine
    from palette_lens.search.result import SearchConfig

    direction = toy_direction(tiny_qwen, toy_prompts)
    cfg = BakeConfig(steps=6, eval_every=0, batch_size=4, margin_retry=0.0)
    first = bake_direction(tiny_qwen, direction, toy_prompts, cfg, progress=False).adapter
    before = {k: v.detach().clone() for k, v in tiny_qwen.hf_model.state_dict().items()}
    result = refine(tiny_qwen, first, toy_prompts, cfg, search_config=SearchConfig(top_k=2, n_val=4, n_val_other=1),
                    progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_qwen.hf_model.state_dict().items())  # caller's model kept
    assert result.search.chosen.layer == first.layer  # the search stayed at the adapter's layer
    assert {c["layer"] for c in result.search.candidates if c["eligible"]} == {first.layer}
    stacked = result.adapter
    assert stacked.layer_index == first.layer_index and stacked.rank == first.rank + result.second.adapter.rank
    assert stacked.meta["refined"]["position"] == result.search.chosen.position
    for n, delta in stacked.deltas().items():  # ΔW = ΔW₁ + ΔW₂ exactly
        torch.testing.assert_close(delta, first.deltas()[n] + result.second.adapter.deltas()[n], atol=1e-6, rtol=1e-5)
    ids = tiny_qwen.tokenizer("a short prompt", return_tensors="pt").input_ids
    one = merged_hf_model(tiny_qwen, [stacked])
    two = merged_hf_model(apply_adapters(tiny_qwen, [first]), [result.second.adapter])
    with torch.no_grad():
        torch.testing.assert_close(one(ids).logits, two(ids).logits, atol=1e-4, rtol=1e-4)
    stacked.save(tmp_path / "refined")  # a normal adapter: saved, checked and loaded like any other
    loaded = load_adapter(tmp_path / "refined", tiny_qwen)
    assert loaded.rank == stacked.rank and loaded.meta["refined"]["first_rank"] == first.rank


# ---------------------------------------------------------------------- precision
# Relative ‖ΔW − ΔW_float32‖ / ‖ΔW_float32‖ allowed per module for a bake of the same tiny model cast to a
# lower precision (the block is trained in a float32 copy; the frozen layers around it run in the model's dtype).
# Measured: at most 0.041 in bfloat16 and 0.0025 in float16 (60 steps, three checkpoints).
DTYPE_TOLERANCE = {torch.float32: 0.0, torch.bfloat16: 0.1, torch.float16: 0.01}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE), ids=lambda d: str(d).removeprefix("torch."))
def test_bake_in_the_models_dtype_matches_the_float32_bake(dtype, toy_prompts, baked):
    from palette_lens.models.tiny import tiny_chat_model

    direction32, result32, _ = baked  # tiny_qwen: the same random weights (seed 0) in float32
    model = tiny_chat_model("qwen2", seed=0, dtype=dtype)
    assert next(model.hf_model.parameters()).dtype == dtype
    direction = Direction(direction32.vector, direction32.layer, -1, "cyber", model_fingerprint=model.fingerprint)
    result = bake_direction(model, direction, toy_prompts, BakeConfig(steps=60, eval_every=20, batch_size=8, lr=3e-3),
                            progress=False)
    ref = result32.adapter.deltas()
    got = result.adapter.deltas()
    assert got.keys() == ref.keys()
    for name, delta in ref.items():
        rel = float((got[name].float() - delta.float()).norm() / delta.float().norm())
        assert rel <= DTYPE_TOLERANCE[dtype], (name, rel)
    assert next(model.hf_model.parameters()).dtype == dtype  # the caller's model is left as it was
