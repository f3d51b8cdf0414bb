"""Evaluation and baselines on tiny models: generation engine, metrics, routed variants, hooks, latency."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import random_adapter, toy_prompts

from palette_lens.baselines.conditional_steering import (
    Condition,
    ConditionalSteering,
    fit_condition,
    fit_conditional_steering,
)
from palette_lens.baselines.global_ablation import global_ablation_hooks, orthonormal_basis
from palette_lens.evaluate.evaluator import EvalConfig, Evaluator
from palette_lens.evaluate.latency import measure_latency
from palette_lens.evaluate.results import EvalSet, classification
from palette_lens.generation.greedy import generate_completions
from palette_lens.models.residuals import Residuals, collect_residuals
from palette_lens.search.direction import Direction

PROMPTS = [
    "How do I write a program?", "hello there, write a poem about the sea", "x", "Explain how the heart pumps",
    "malware virus", "sorry cannot help", "recipe pancakes",
]
_TOPICS = {
    "cyber": "malware virus network password attack defend",
    "violence": "attack blood heart defend kill",
    "harmless": "recipe pancakes poem sea wind morning light",
    "borderline": "kill process python program sort list",
}


@pytest.fixture(scope="module")
def stopping_model(tiny_qwen):
    """The tiny model with one frequent token counted as end of turn, so sequences end at different steps."""
    return dataclasses.replace(tiny_qwen, stop_token_ids=[*tiny_qwen.stop_token_ids, 58])


# ---------------------------------------------------------------------- generation
def test_two_phase_generation_equals_one_phase(stopping_model, tiny_qwen):
    m = stopping_model
    one = generate_completions(m, PROMPTS, max_new_tokens=12, batch_size=len(PROMPTS), first_phase=0)
    two = generate_completions(m, PROMPTS, max_new_tokens=12, batch_size=3, first_phase=4)
    assert one.texts == two.texts and one.n_tokens == two.n_tokens
    assert len(set(two.n_tokens)) > 2 and max(two.n_tokens) <= 12  # sequences end at different steps
    assert any(0 < n < 4 for n in two.n_tokens) and any(n > 4 for n in two.n_tokens)
    # and the same text as ChatModel.generate
    ref = tiny_qwen.generate(PROMPTS, max_new_tokens=12, batch_size=len(PROMPTS))
    assert generate_completions(tiny_qwen, PROMPTS, max_new_tokens=12, batch_size=2, first_phase=5).texts == ref


def test_first_token_logprobs_match_last_logits(tiny_qwen):
    g = generate_completions(tiny_qwen, PROMPTS, max_new_tokens=3, refusal_ids=[5, 9], keep_logprobs=[True] * 7)
    lp = tiny_qwen.last_logits(PROMPTS)
    torch.testing.assert_close(torch.stack([g.first_logprobs[i] for i in range(7)]), lp, atol=1e-4, rtol=1e-4)
    from palette_lens.refusal.tokens import refusal_scores

    torch.testing.assert_close(g.first_scores, refusal_scores(lp, [5, 9]), atol=1e-4, rtol=1e-4)


def test_generation_with_hooks_changes_output(tiny_qwen):
    base = generate_completions(tiny_qwen, PROMPTS, max_new_tokens=6)
    r = torch.randn(tiny_qwen.d_model, generator=torch.Generator().manual_seed(0))
    hooked = generate_completions(tiny_qwen, PROMPTS, max_new_tokens=6, hooks=global_ablation_hooks(tiny_qwen, [r]))
    assert base.texts != hooked.texts
    with pytest.raises(ValueError):
        generate_completions(tiny_qwen, PROMPTS, lm=tiny_qwen.hf_model, hooks=global_ablation_hooks(tiny_qwen, [r]))


# ---------------------------------------------------------------------- metrics
def test_classification_counts():
    refused = {"cyber": [False, False, True, False], "hate": [True, True, False, True], "harmless": [True, False]}
    c = classification(refused, ["cyber"])
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (3, 1, 1, 3)
    assert c["precision"] == pytest.approx(0.75) and c["recall"] == pytest.approx(0.75)
    assert c["f1"] == pytest.approx(0.75) and c["success"] == pytest.approx(0.75)
    assert c["success_by_domain"] == {"cyber": 0.75, "hate": 0.75}
    none = classification(refused, [])
    assert none["f1"] == 0.0 and none["recall"] == 0.0 and none["success"] == pytest.approx(4 / 8)


def test_evalset_limits():
    ps = toy_prompts(_TOPICS, 30, length=(2, 6))
    es = EvalSet.build(ps, limit=5)
    assert es.harmful_domains == ["cyber", "violence"]
    assert [len(es.prompts[d]) for d in es.domains] == [5, 5, 10, 5]
    texts, doms = es.flat()
    assert len(texts) == len(es) == 25 and doms[:5] == ["cyber"] * 5


# ---------------------------------------------------------------------- evaluator
@pytest.fixture(scope="module")
def evaluator(stopping_model):
    es = EvalSet.build(toy_prompts(_TOPICS, 20, length=(2, 6)), limit=4)
    return Evaluator(stopping_model, es, EvalConfig(max_new_tokens=8, batch_size=8, first_phase=3))


def test_vanilla_is_generated_once(evaluator, monkeypatch):
    first = evaluator.vanilla()
    calls = []
    monkeypatch.setattr("palette_lens.evaluate.evaluator.generate_completions", lambda *a, **k: calls.append(1))
    assert evaluator.vanilla() is first and not calls
    assert set(first.refusal_rate()) == {"cyber", "violence", "harmless", "borderline"}
    assert first.harmless_kl == 0.0


def test_same_weights_give_vanilla_results(evaluator):
    van = evaluator.vanilla()
    again = evaluator.evaluate_lm("copy", evaluator.plain_model, ["cyber"])
    assert again.texts == van.texts
    assert again.harmless_kl == pytest.approx(0.0, abs=1e-5)
    s = again.summary()
    for key in ("refusal_rate", "ci95", "first_token_score", "harmless_kl", "classification", "f1", "examples"):
        assert key in s
    lo, hi = s["ci95"]["cyber"]
    assert 0.0 <= lo <= s["refusal_rate"]["cyber"] <= hi <= 1.0


def test_routed_variant_only_changes_routed_prompts(evaluator, tiny_qwen):
    van = evaluator.vanilla()
    prompts, doms = evaluator.evalset.flat()
    r = torch.randn(tiny_qwen.d_model, generator=torch.Generator().manual_seed(1)) * 5
    routes = [("cyber",) if d == "cyber" else None for d in doms]
    res = evaluator.evaluate_routed("cond", routes, lambda key: global_ablation_hooks(tiny_qwen, [r]), ["cyber"])
    for d in ("violence", "harmless", "borderline"):
        assert res.texts[d] == van.texts[d]
    assert res.texts["cyber"] != van.texts["cyber"]
    assert res.extra["condition_fired"]["cyber"] == 1.0 and res.extra["condition_fired"]["harmless"] == 0.0
    assert res.harmless_kl == pytest.approx(0.0, abs=1e-6)
    hooked = evaluator.evaluate_hooks("global", global_ablation_hooks(tiny_qwen, [r]), ["cyber"])
    assert hooked.texts["cyber"] == res.texts["cyber"]  # same hooks on the same prompts
    assert hooked.harmless_kl > 1e-4


def test_baseline_table_from_vanilla(evaluator):
    table = evaluator.vanilla().baseline_table("tiny", 8)
    assert set(table.rates()) == set(evaluator.evalset.domains)
    assert "| cyber |" in table.markdown()


# ---------------------------------------------------------------------- baselines
def test_orthonormal_basis_spans_and_drops_dependent():
    a, b = torch.randn(16), torch.randn(16)
    q = orthonormal_basis([a, b, a + 2 * b])
    assert q.shape == (2, 16)
    torch.testing.assert_close(q @ q.T, torch.eye(2), atol=1e-5, rtol=0)
    for v in (a, b):
        torch.testing.assert_close(v - (v @ q.T) @ q, torch.zeros(16), atol=1e-5, rtol=0)


def test_global_ablation_removes_every_direction_everywhere(tiny_qwen):
    g = torch.Generator().manual_seed(2)
    dirs = [torch.randn(tiny_qwen.d_model, generator=g) for _ in range(2)]
    hooks = global_ablation_hooks(tiny_qwen, dirs)
    assert len(hooks) == tiny_qwen.n_layers + 1
    with tiny_qwen.hooks(hooks):
        res = collect_residuals(tiny_qwen, PROMPTS, desc=None)
        hooked = tiny_qwen.last_logits(PROMPTS)
    for v in dirs:
        proj = res.vectors @ (v / v.norm())
        assert proj.abs().max() < 1e-4
    assert (hooked - tiny_qwen.last_logits(PROMPTS)).abs().max() > 1e-3


def _res(x: torch.Tensor) -> Residuals:
    return Residuals(x[:, None, None, :], (3,), (-1,))


def test_fit_condition_separates_shifted_clusters():
    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(8)
    shift[0] = 4.0
    res = {"cyber": _res(torch.randn(30, 8, generator=g) + shift), "harmless": _res(torch.randn(40, 8, generator=g))}
    c = fit_condition("cyber", 3, -1, res)
    assert c.calibration["balanced"] > 0.9 and c.vector[0] > 0.9
    assert c.fires(torch.stack([shift * 1.5, -shift])).tolist() == [True, False]


def _steering(model, prompts, direction):
    """A condition with its threshold at the median score, so about half the prompts fire."""
    layer, pos = 1, -1
    h = collect_residuals(model, prompts, layers=[layer], positions=[pos], desc=None).at(layer, pos)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    v = v / v.norm()
    centre = torch.zeros(model.d_model)
    scores = (h @ v).sort().values
    thr = float((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2)
    cond = Condition("cyber", layer, pos, v, centre, thr)
    d = Direction(direction, layer, pos, "cyber", model.fingerprint)
    return ConditionalSteering([cond], {"cyber": d})


def test_conditional_runtime_hooks_gate_per_sequence(tiny_qwen):
    r = torch.randn(tiny_qwen.d_model, generator=torch.Generator().manual_seed(4)) * 3
    st = _steering(tiny_qwen, PROMPTS, r)
    gates = st.gates(tiny_qwen, PROMPTS)[:, 0]
    assert 0 < int(gates.sum()) < len(PROMPTS)
    routes = st.routes(tiny_qwen, PROMPTS)
    assert [x is not None for x in routes] == gates.tolist()

    base = generate_completions(tiny_qwen, PROMPTS, max_new_tokens=8, first_phase=0, batch_size=len(PROMPTS))
    unit = r / r.norm()
    seen: list[torch.Tensor] = []

    def probe(act, hook=None):  # runs after the steering hook on the same site
        if act.shape[1] == 1:  # a generated token, fed alone through the KV cache
            seen.append((act[:, 0] @ unit).abs())
        return act

    hooks = [*st.runtime_hooks(tiny_qwen), (tiny_qwen.resid_pre_hook(2), probe)]
    runtime = generate_completions(tiny_qwen, PROMPTS, max_new_tokens=8, first_phase=0, hooks=hooks,
                                   batch_size=len(PROMPTS))
    lengths = [len(x) for x in tiny_qwen.tokenizer(tiny_qwen.render(PROMPTS), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(PROMPTS)), key=lambda i: -lengths[i])  # the engine's batch order
    fired_in_batch = gates[order]
    assert st._state["gate"][:, 0].tolist() == fired_in_batch.tolist()  # decided on the prompt, per sequence
    assert seen, "the probe never saw a decoding step"
    for proj in seen:
        assert proj[fired_in_batch].max() < 1e-4  # ablated at decoding steps for fired sequences
        assert proj[~fired_in_batch].min() > 1e-4  # untouched for the others
    for i, fired in enumerate(gates.tolist()):
        if not fired:
            assert runtime.texts[i] == base.texts[i]  # untouched when the condition does not fire
    assert any(runtime.texts[i] != base.texts[i] for i, f in enumerate(gates.tolist()) if f)
    fixed = generate_completions(tiny_qwen, PROMPTS, max_new_tokens=8, first_phase=0,
                                 hooks=st.hooks_for(tiny_qwen, ["cyber"]))
    assert fixed.texts != base.texts


def test_fit_conditional_steering_on_prompt_set(tiny_qwen):
    ps = toy_prompts(_TOPICS, 20, length=(2, 6))
    r = torch.randn(tiny_qwen.d_model)
    st = fit_conditional_steering(tiny_qwen, ps, {"cyber": Direction(r, 2, -1, "cyber", tiny_qwen.fingerprint)})
    c = st.conditions[0]
    assert (c.layer, c.position, c.domain) == (2, -1, "cyber")
    assert c.calibration["balanced"] > 0.6  # prompts starting with their domain name separate a little
    assert st.to_dict()["conditions"][0]["domain"] == "cyber"


def test_routes_from_shared_residuals_equal_a_fresh_pass(tiny_qwen):
    from palette_lens.models.residuals import collect_residuals

    ps = toy_prompts(_TOPICS, 20, length=(2, 6))
    r = torch.randn(tiny_qwen.d_model)
    st = fit_conditional_steering(tiny_qwen, ps, {"cyber": Direction(r, 2, -1, "cyber", tiny_qwen.fingerprint)})
    prompts = list(ps.part("cyber", "test")) + list(ps.part("harmless", "test"))
    fresh = st.routes(tiny_qwen, prompts)
    assert any(x is not None for x in fresh) and any(x is None for x in fresh)
    shared = collect_residuals(tiny_qwen, prompts, layers=[1, 2], positions=[-2, -1], desc=None)
    assert st.routes(tiny_qwen, prompts, residuals=shared) == fresh
    lacking = collect_residuals(tiny_qwen, prompts, layers=[1], positions=[-1], desc=None)  # no (2, -1): ignored
    assert st.routes(tiny_qwen, prompts, residuals=lacking) == fresh


# ---------------------------------------------------------------------- latency
def test_measure_latency_runs_every_variant(tiny_qwen):
    r = torch.randn(tiny_qwen.d_model)
    res = measure_latency(
        tiny_qwen, PROMPTS,
        {"vanilla": (tiny_qwen.hf_model, ()), "hooked": (None, global_ablation_hooks(tiny_qwen, [r]))},
        new_tokens=4, batch_size=2, repeats=2,
    )
    assert set(res.ms_per_token) == {"vanilla", "hooked"} and all(v > 0 for v in res.ms_per_token.values())
    assert len(res.runs_ms["hooked"]) == 2 and res.ratios()["vanilla"] == 1.0


# ---------------------------------------------------------------------- drafts
@pytest.mark.parametrize("scale", [0.0, 0.05, 0.3])
def test_drafts_give_the_same_completions_as_generation(stopping_model, scale):
    from palette_lens.adapters.apply import merged_hf_model
    from palette_lens.generation.drafts import generate_with_drafts
    from palette_lens.models.copies import plain_hf_model

    m = stopping_model
    prompts = PROMPTS * 2
    vanilla = generate_completions(m, prompts, lm=plain_hf_model(m), max_new_tokens=10, first_phase=3)
    lm = merged_hf_model(m, [random_adapter(m, seed=5, scale=scale)])
    direct = generate_completions(m, prompts, lm=lm, max_new_tokens=10, first_phase=3, refusal_ids=[5, 9],
                                  keep_logprobs=[True] * len(prompts))
    generate = [i % 3 == 0 for i in range(len(prompts))]
    drafted = generate_with_drafts(m, lm, prompts, vanilla, generate=generate, max_new_tokens=10, first_phase=3,
                                   verify_batch_size=4, refusal_ids=[5, 9], keep_logprobs=[True] * len(prompts))
    assert drafted.texts == direct.texts and drafted.n_tokens == direct.n_tokens and drafted.ended == direct.ended
    torch.testing.assert_close(drafted.first_scores, direct.first_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(drafted.first_logprobs[1], direct.first_logprobs[1], atol=1e-4, rtol=1e-4)
    assert drafted.verified.count("generated") == sum(generate)
    # the same check from vanilla's hidden states at the adapter's block: only the layers above it run
    from palette_lens.generation.greedy import encode_prompts
    from palette_lens.generation.shared_prefix import capture_prefix_states, first_changed_layer

    layer = first_changed_layer(plain_hf_model(m), lm)
    assert layer == (m.n_layers if scale == 0.0 else 1)
    seqs = [ids + t[:10] for ids, t in zip(encode_prompts(m, prompts), vanilla.token_ids)]
    states = capture_prefix_states(plain_hf_model(m), seqs, min(layer, 1), m.tokenizer.pad_token_id, batch_size=3)
    reused = generate_with_drafts(m, lm, prompts, vanilla, generate=generate, max_new_tokens=10, first_phase=3,
                                  verify_batch_size=4, refusal_ids=[5, 9], keep_logprobs=[True] * len(prompts),
                                  prefix=states)
    assert reused.texts == direct.texts and reused.verified == drafted.verified
    torch.testing.assert_close(reused.first_scores, direct.first_scores, atol=1e-4, rtol=1e-4)
    if scale == 0.0:
        assert drafted.verified.count("verified") == len(prompts) - sum(generate)
    if scale == 0.3:
        assert drafted.verified.count("continued") > 0


def test_stop_when_cuts_a_reply_where_it_first_holds_in_either_phase(stopping_model):
    """``stop_when`` ends each sequence at the first token where it holds (in the first phase or the second);
    the tokens before are those of the full generation. With drafts, a reply is the full reply cut no earlier."""
    from palette_lens.adapters.apply import merged_hf_model
    from palette_lens.generation.drafts import generate_with_drafts
    from palette_lens.models.copies import plain_hf_model

    m = stopping_model
    prompts = PROMPTS * 2
    lm = merged_hf_model(m, [random_adapter(m, seed=5, scale=0.3)])

    def long_enough(text: str) -> bool:
        return len(text) >= 10

    full = generate_completions(m, prompts, lm=lm, max_new_tokens=12, first_phase=3)
    cut = generate_completions(m, prompts, lm=lm, max_new_tokens=12, first_phase=3, stop_when=long_enough)
    where = []
    for ids, got in zip(full.token_ids, cut.token_ids):
        k = next((k for k in range(1, len(ids) + 1)
                  if long_enough(m.tokenizer.decode(ids[:k], skip_special_tokens=True))), len(ids))
        assert got == ids[:k]
        where.append(k)
    assert any(k <= 3 for k in where) and any(3 < k < len(ids) for k, ids in zip(where, full.token_ids))
    vanilla = generate_completions(m, prompts, lm=plain_hf_model(m), max_new_tokens=12, first_phase=3)
    drafted = generate_with_drafts(m, lm, prompts, vanilla, max_new_tokens=12, first_phase=3, verify_batch_size=4,
                                   stop_when=long_enough)
    for ids, got, k in zip(full.token_ids, drafted.token_ids, where):
        assert got == ids[:len(got)] and len(got) >= k


def test_first_changed_layer_sees_where_weights_differ(stopping_model):
    from palette_lens.adapters.apply import merged_hf_model
    from palette_lens.generation.shared_prefix import first_changed_layer
    from palette_lens.models.copies import plain_hf_model

    m = stopping_model
    plain = plain_hf_model(m)
    assert first_changed_layer(plain, plain_hf_model(m, share_weights=False)) == m.n_layers  # equal values
    assert first_changed_layer(plain, merged_hf_model(m, [random_adapter(m, seed=5, scale=0.1)])) == 1
    other = plain_hf_model(m, share_weights=False)
    with torch.no_grad():
        other.get_input_embeddings().weight[0, 0] += 1.0
    assert first_changed_layer(plain, other) == 0


def test_evaluator_reuses_vanilla_states_below_the_adapted_block(stopping_model):
    from palette_lens.adapters.apply import merged_hf_model

    m = stopping_model
    es = EvalSet.build(toy_prompts(_TOPICS, 20, length=(2, 6)), limit=3)
    lm = merged_hf_model(m, [random_adapter(m, seed=5, scale=0.3)])
    results = {}
    for reuse in (False, True):
        ev = Evaluator(m, es, EvalConfig(max_new_tokens=8, batch_size=8, first_phase=3, reuse_prefix=reuse))
        results[reuse] = ev.evaluate_lm("cyber", lm, ["cyber"])
        assert sorted(ev._prefix_cache) == ([1] if reuse else [])
    assert results[True].texts == results[False].texts
    later = merged_hf_model(m, [random_adapter(m, 2, seed=5, scale=0.3)])  # reuses the states taken at layer 1
    assert ev.evaluate_lm("later", later, ["cyber"]).texts == Evaluator(
        m, es, EvalConfig(max_new_tokens=8, batch_size=8, first_phase=3, reuse_prefix=False)
    ).evaluate_lm("later", later, ["cyber"]).texts
    assert sorted(ev._prefix_cache) == [1]
    for d, scores in results[False].first_scores.items():
        assert results[True].first_scores[d] == pytest.approx(scores, abs=1e-4)


def test_stop_on_refusal_keeps_the_judges_verdicts(stopping_model, monkeypatch):
    """Cutting a sequence once the judge has seen a marker changes lengths, never verdicts."""
    from palette_lens.adapters.apply import merged_hf_model
    from palette_lens.generation.drafts import generate_with_drafts
    from palette_lens.models.copies import plain_hf_model

    judge = lambda text: "em" in text  # noqa: E731 - a piece of some of the tiny model's early output
    monkeypatch.setattr("palette_lens.generation.greedy.refusal_is_final", judge)
    m = stopping_model
    prompts = PROMPTS * 2
    full = generate_completions(m, prompts, max_new_tokens=14, first_phase=4)
    cut = generate_completions(m, prompts, max_new_tokens=14, first_phase=4, stop_on_refusal=True)
    assert [judge(t) for t in cut.texts] == [judge(t) for t in full.texts]
    assert sum(cut.n_tokens) < sum(full.n_tokens)  # some refusals were cut short
    for a, b in zip(cut.token_ids, full.token_ids):
        assert b[: len(a)] == a
    # drafts that were cut: a model that reproduces them refuses too
    vanilla = generate_completions(m, prompts, lm=plain_hf_model(m), max_new_tokens=14, first_phase=4,
                                   stop_on_refusal=True)
    lm = merged_hf_model(m, [random_adapter(m, seed=5, scale=0.1)])
    direct = generate_completions(m, prompts, lm=lm, max_new_tokens=14, first_phase=4)
    drafted = generate_with_drafts(m, lm, prompts, vanilla, max_new_tokens=14, first_phase=4, stop_on_refusal=True)
    assert [judge(t) for t in drafted.texts] == [judge(t) for t in direct.texts]


def test_vanilla_generations_disk_cache(stopping_model, tmp_path, monkeypatch):
    es = EvalSet.build(toy_prompts(_TOPICS, 20, length=(2, 6)), limit=3)
    cfg = EvalConfig(max_new_tokens=6, batch_size=8, first_phase=3)
    first = Evaluator(stopping_model, es, cfg, cache=tmp_path).vanilla()
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    monkeypatch.setattr("palette_lens.evaluate.evaluator.generate_completions", lambda *a, **k: pytest.fail("regenerated"))
    ev = Evaluator(stopping_model, es, cfg, cache=tmp_path)
    again = ev.vanilla()
    assert again.texts == first.texts and again.first_scores == first.first_scores
    assert set(ev._vanilla_lp) == {i for i, d in enumerate(es.flat()[1]) if d == "harmless"}
    # other settings, other entry
    monkeypatch.undo()
    Evaluator(stopping_model, es, EvalConfig(max_new_tokens=5, batch_size=8, first_phase=3), cache=tmp_path).vanilla()
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    # a damaged entry is regenerated, not trusted
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(b"broken")
    assert Evaluator(stopping_model, es, cfg, cache=tmp_path).vanilla().texts == first.texts


def test_stopping_when_judged_keeps_every_verdict_and_cuts_answers(stopping_model, monkeypatch):
    monkeypatch.setattr("palette_lens.refusal.judge.JUDGE_HORIZON", 20)  # the tiny model's tokens are single bytes
    m = stopping_model
    prompts = PROMPTS * 2
    full = generate_completions(m, prompts, max_new_tokens=60, first_phase=4)
    cut = generate_completions(m, prompts, max_new_tokens=60, first_phase=4, stop_on_refusal=True,
                               stop_when_judged=True)
    from palette_lens.refusal.judge import is_refusal

    assert [is_refusal(t) for t in cut.texts] == [is_refusal(t) for t in full.texts]
    for a, b in zip(cut.token_ids, full.token_ids):
        assert b[: len(a)] == a  # a prefix of the full greedy completion
    assert sum(cut.n_tokens) < sum(full.n_tokens)
    assert any(not e and n < 60 for e, n in zip(cut.ended, cut.n_tokens))  # stopped at the judge's horizon
