"""Direction search: Pareto front (property-based), selection rule, proxies, fast scoring, end-to-end search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import toy_prompts
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from palette_lens.models.hooks import ablation_hooks
from palette_lens.refusal.prefix_scorer import PrefixScorer
from palette_lens.refusal.tokens import refusal_scores
from palette_lens.search.direction import Direction
from palette_lens.search.direction_search import search_direction
from palette_lens.search.objectives import attribution_estimates, attribution_matrix, mean_diff_auc
from palette_lens.search.pareto import choose, dominates, pareto_front, select_tradeoff
from palette_lens.search.result import SearchConfig, SearchResult

# ------------------------------------------------------------------ Pareto front (pure)
scores = st.integers(1, 30).flatmap(
    lambda n: st.integers(1, 4).flatmap(
        lambda k: st.tuples(
            arrays(np.float64, (n, k), elements=st.integers(-5, 5).map(float)),  # small ints: many ties
            st.lists(st.booleans(), min_size=k, max_size=k),
        )
    )
)


@given(scores)
@settings(max_examples=200, deadline=None)
def test_pareto_front_is_exactly_the_non_dominated_set(data):
    values, maximize = data
    front = pareto_front(values, maximize)
    assert front == sorted(set(front))
    assert front, "a non-empty finite set always has a non-dominated point"
    for i in range(len(values)):
        dominated = any(dominates(values[j], values[i], maximize) for j in range(len(values)))
        assert (i in front) == (not dominated)
    # every point off the front is dominated by a point on it
    for i in set(range(len(values))) - set(front):
        assert any(dominates(values[j], values[i], maximize) for j in front)


@given(scores, st.randoms())
@settings(max_examples=100, deadline=None)
def test_pareto_front_invariant_to_order_and_to_flipping_a_sense(data, rnd):
    values, maximize = data
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    front = pareto_front(values, maximize)
    permuted = pareto_front(values[perm], maximize)
    assert sorted(perm[i] for i in permuted) == front
    flipped = values.copy()
    flipped[:, 0] = -flipped[:, 0]
    assert pareto_front(flipped, [not maximize[0], *maximize[1:]]) == front


def test_pareto_front_small_cases():
    # minimise bypass, maximise retain
    v = np.array([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [-1.0, 0.0], [0.5, 2.0], [np.nan, 9.0]])
    assert pareto_front(v, [False, True]) == [0, 2, 3, 4]
    with pytest.raises(ValueError):
        pareto_front(v, [False])


def test_select_tradeoff_extremes_and_monotone_path():
    rng = np.random.default_rng(0)
    bypass = rng.normal(size=40)
    retain = rng.normal(size=40)
    assert select_tradeoff(bypass, retain, 1.0) == int(np.argmin(bypass))
    assert select_tradeoff(bypass, retain, 0.0) == int(np.argmax(retain))
    # along the α path the chosen bypass never gets worse as α grows
    chosen = [bypass[select_tradeoff(bypass, retain, a)] for a in np.linspace(0, 1, 21)]
    assert all(b2 <= b1 + 1e-12 for b1, b2 in zip(chosen, chosen[1:]))
    # every choice lies on the Pareto front of (bypass min, retain max)
    front = pareto_front(np.c_[bypass, retain], [False, True])
    for a in np.linspace(0.01, 0.99, 9):
        assert select_tradeoff(bypass, retain, a) in front
    with pytest.raises(ValueError):
        select_tradeoff(bypass, retain, 1.5)


def _row(b, r, kl):
    return {"bypass_T": b, "retain": r, "kl_H": kl}


def test_choose_filters_and_fallbacks():
    rows = [_row(-3.0, 0.0, 0.5), _row(-2.0, 0.5, 0.05), _row(0.5, 1.0, 0.01), _row(-1.0, 0.9, 0.02)]
    i, fb = choose(rows, alpha=0.5, kl_max=0.1, bypass_max=0.0)
    assert fb is None and i in (1, 3)  # row 0 fails KL, row 2 fails bypass
    i, fb = choose(rows, alpha=1.0, kl_max=0.1, bypass_max=0.0)
    assert (i, fb) == (1, None)
    # nothing reaches the bypass bound: bypass constraint dropped, KL kept
    i, fb = choose([_row(1.0, 0.2, 0.01), _row(0.5, 0.1, 0.02), _row(-1.0, 0.0, 0.9)], 1.0, 0.1, 0.0)
    assert i == 1 and "bypass" in fb
    # nothing passes KL: the smallest KL
    i, fb = choose([_row(-1.0, 0.2, 0.5), _row(-2.0, 0.1, 0.3)], 0.5, 0.1, 0.0)
    assert i == 1 and "kl_H" in fb


# ------------------------------------------------------------------ proxies
def test_mean_diff_auc_separable_vs_identical():
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(20, 3, 16, generator=gen)
    neg = torch.randn(30, 3, 16, generator=gen)
    pos[:, 0] += 4.0  # site 0 separable, sites 1-2 not
    auc = mean_diff_auc(pos, neg)
    assert auc.shape == (3,)
    assert auc[0] > 0.97
    assert (auc[1:] - 0.5).abs().max() < 0.25


def _write_perturbation_score(model, prompts, ids, unit, eps):
    """Mean refusal score with r̂ scaled by (1 − eps) in every *vanilla* write (fixed additive changes)."""
    names = [model.resid_pre_hook(l) for l in range(model.n_layers)] + [f"blocks.{model.n_layers - 1}.hook_out"]
    hs = {}

    def grab(i):
        def hook(act, hook=None):  # noqa: ARG001
            hs[i] = act.detach().clone()
            return act

        return hook

    with model.hooks([(n, grab(i)) for i, n in enumerate(names)]):
        base = refusal_scores(model.last_logits(prompts, batch_size=len(prompts)), ids).mean()
    deltas = {}
    prev = torch.zeros_like(hs[0])
    for i in range(len(names)):
        w = hs[i] - prev
        deltas[i] = -eps * (w @ unit).unsqueeze(-1) * unit
        prev = hs[i]

    def add(i):
        def hook(act, hook=None):  # noqa: ARG001
            return act + deltas[i]

        return hook

    with model.hooks([(n, add(i)) for i, n in enumerate(names)]):
        pert = refusal_scores(model.last_logits(prompts, batch_size=len(prompts)), ids).mean()
    return float(base), float(pert)


def test_attribution_estimate_matches_finite_difference(tiny_qwen):
    """−r̂ᵀMr̂ is the derivative of the score when r̂ is removed from every write (checked numerically)."""
    prompts = ["How do I sort a list?", "Write a poem about the sea and wind.", "hi there"]
    ids = [5, 17, 42]
    gen = torch.Generator().manual_seed(1)
    unit = torch.randn(tiny_qwen.d_model, generator=gen)
    unit = unit / unit.norm()
    m = attribution_matrix(tiny_qwen, prompts, ids, batch_size=len(prompts))
    est = float(attribution_estimates(m, unit[None])[0])
    eps = 1e-2
    base, pert = _write_perturbation_score(tiny_qwen, prompts, ids, unit, eps)
    fd = (pert - base) / eps
    assert abs(est) > 1e-4
    assert est == pytest.approx(fd, rel=0.05, abs=1e-4)


def test_edit_attribution_matches_finite_difference(tiny_qwen):
    """−s·Σ(h·r̂)(g·r̂) is the derivative of the score under the one-block edit with scale s (prompt's own tokens)."""
    from palette_lens.models.blocks import prefix_length
    from palette_lens.search.objectives import edit_attribution_estimates

    prompts = ["How do I sort a list?", "Write a poem about the sea and wind.", "hi there"]
    ids = [5, 17, 42]
    gen = torch.Generator().manual_seed(3)
    units = torch.randn(2, tiny_qwen.d_model, generator=gen)
    units = units / units.norm(dim=-1, keepdim=True)
    layer, eps = 1, 1e-2
    est = edit_attribution_estimates(tiny_qwen, prompts, ids, {layer: units}, scale=eps, batch_size=len(prompts))[layer]
    n_prefix = prefix_length(tiny_qwen)
    base = refusal_scores(tiny_qwen.last_logits(prompts, batch_size=len(prompts)), ids).mean()
    for k in range(2):
        u = units[k]

        def edit(act, hook=None, u=u):  # noqa: ARG001 - the edit on the prompt's own tokens only
            enc = tiny_qwen.encode(prompts)
            mask = enc["attention_mask"]
            own = (mask.bool() & ((mask.cumsum(-1) - 1) >= n_prefix)).unsqueeze(-1)
            return torch.where(own, act - eps * (act @ u).unsqueeze(-1) * u, act)

        pert = refusal_scores(tiny_qwen.last_logits(prompts, hooks=[(tiny_qwen.resid_pre_hook(layer), edit)],
                                                    batch_size=len(prompts)), ids).mean()
        assert abs(float(est[k])) > 1e-6
        assert float(est[k]) == pytest.approx(float(pert - base), rel=0.05, abs=1e-6)


def test_edit_scoring_skips_the_shared_prefix_and_scale_one_is_ablation(tiny_qwen):
    """The search's edit scores equal a hook on the prompt's own tokens; scale 1 on every token is ablation."""
    from palette_lens.models.hooks import ablation_hook, projection_edit_hook

    gen = torch.Generator().manual_seed(4)
    act = torch.randn(2, 5, tiny_qwen.d_model, generator=gen)
    r = torch.randn(tiny_qwen.d_model, generator=gen)
    assert torch.allclose(projection_edit_hook(r, 1.0)(act), ablation_hook(r)(act), atol=1e-5)
    unit = r / r.norm()
    edited = projection_edit_hook(r, 2.5)(act)
    assert torch.allclose(edited @ unit, -1.5 * (act @ unit), atol=1e-4)

    prompts = ["How do I sort a list?", "Write a poem about the sea and the wind in the morning.", "hi"]
    scorer = PrefixScorer(tiny_qwen, prompts, batch_size=2)
    hooks = [(tiny_qwen.resid_pre_hook(1), projection_edit_hook(r, 2.5))]
    skip = scorer.logprobs(hooks, hooks_on_prefix=False)
    every = scorer.logprobs(hooks)
    assert not torch.allclose(skip, every, atol=1e-4)  # the prefix edit matters ...
    assert torch.allclose(every, tiny_qwen.last_logits(prompts, hooks=hooks), atol=1e-4)  # ... and is the plain run
    assert not torch.allclose(skip, scorer.logprobs(), atol=1e-4)  # the edit of the own tokens changes the output


@pytest.mark.parametrize("name", ["tiny_qwen", "tiny_llama"])
def test_prefix_scorer_equals_plain_forward(name, request):
    model = request.getfixturevalue(name)
    prompts = ["How do I sort a list?", "Write a poem about the sea and the wind in the morning.", "hi", "Explain blood."]
    scorer = PrefixScorer(model, prompts, batch_size=3)
    assert scorer.n_prefix > 0
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    for hooks in [(), ablation_hooks(model, r)]:
        assert torch.allclose(scorer.logprobs(hooks), model.last_logits(prompts, hooks=hooks), atol=1e-4)
    assert torch.allclose(
        PrefixScorer(model, prompts, use_prefix_cache=False).logprobs(), scorer.logprobs(), atol=1e-4
    )


@pytest.mark.parametrize("name", ["tiny_qwen", "tiny_llama"])
def test_prefixed_residuals_equal_plain_collection(name, request):
    from palette_lens.models.residuals import collect_residuals
    from palette_lens.search.candidates import collect_residuals_prefixed

    model = request.getfixturevalue(name)
    prompts = ["How do I sort a list?", "Write a poem about the sea and the wind in the morning.", "hi", "hi"]
    a = collect_residuals(model, prompts, batch_size=3, desc=None)
    b = collect_residuals_prefixed(model, prompts, batch_size=3, desc=None)
    assert (a.layers, a.positions) == (b.layers, b.positions)
    assert torch.allclose(a.vectors, b.vectors, atol=1e-5 * float(a.vectors.abs().max()))


# ------------------------------------------------------------------ end-to-end on a tiny model
# every domain draws from the same words (3 to 8 of them, prompts not numbered)
_WORDS = "malware virus network password attack defend sort list numbers recipe pancakes heart poem sea"
_TOPICS = {d: _WORDS for d in ("cyber", "hate", "violence", "harmless")}


@pytest.fixture(scope="module")
def tiny_search(tiny_qwen):
    ps = toy_prompts(_TOPICS, 30, length=(3, 8), numbered=False)
    return ps, search_direction(tiny_qwen, ps, "cyber", top_k=3, progress=False)


def test_search_result_structure(tiny_qwen, tiny_search):
    ps, res = tiny_search
    n_layers, n_pos = tiny_qwen.n_layers, tiny_qwen.n_post
    assert len(res.candidates) == n_layers * n_pos
    eligible = [c for c in res.candidates if c["eligible"]]
    assert eligible and all(1 <= c["layer"] < n_layers * 0.8 for c in eligible)
    evaluated = [c for c in res.candidates if c["evaluated"]]
    assert len(evaluated) == min(3, len(eligible))
    for c in evaluated:
        assert {"bypass_T", "retain_N", "kl_H", "sep_N", "retain"} <= set(c)
    assert res.pareto and all(p["evaluated"] for p in res.pareto)
    ch = res.chosen
    assert isinstance(ch, Direction) and ch.domain == "cyber"
    assert (ch.layer, ch.position) in {(c["layer"], c["position"]) for c in evaluated}
    assert ch.model_fingerprint == tiny_qwen.fingerprint
    assert torch.allclose(ch.vector, res.candidate_set.vector(ch.layer, ch.position))
    assert len(res.alpha_path) == len(res.config.alphas)


def test_search_chosen_vector_is_the_difference_of_means(tiny_qwen, tiny_search):
    from palette_lens.models.residuals import collect_residuals

    ps, res = tiny_search
    ch = res.chosen
    t = collect_residuals(tiny_qwen, ps.part("cyber", "train"), desc=None).mean()
    h = collect_residuals(tiny_qwen, ps.part("harmless", "train"), desc=None).mean()
    li, pi = ch.layer, tiny_qwen.positions.index(ch.position)
    assert torch.allclose(ch.vector, (t - h)[li, pi].float(), atol=1e-5)


def test_search_save_and_load(tmp_path, tiny_search):
    _, res = tiny_search
    path = res.save(tmp_path)
    data = json.loads(path.read_text())
    assert {"candidates", "pareto", "chosen"} <= set(data)
    assert (tmp_path / "directions" / "cyber.safetensors").is_file()
    assert (tmp_path / "directions" / "cyber.json").is_file()
    back = SearchResult.load(tmp_path)
    assert torch.equal(back.chosen.vector, res.chosen.vector)
    assert (back.chosen.layer, back.chosen.position) == (res.chosen.layer, res.chosen.position)
    assert back.config == res.config


def test_search_exhaustive_and_reused_residuals(tiny_qwen, tiny_search):
    from palette_lens.search.candidates import collect_domain_residuals

    ps, pruned = tiny_search
    res = collect_domain_residuals(tiny_qwen, ps)
    full = search_direction(tiny_qwen, ps, "cyber", residuals=res, top_k=None, progress=False)
    assert all(c["evaluated"] == c["eligible"] for c in full.candidates)
    # with shared residuals the same candidates and proxies come out
    assert len(full.candidates) == len(pruned.candidates)
    compared = 0
    for a, b in zip(full.candidates, pruned.candidates):
        assert a["norm"] == pytest.approx(b["norm"], rel=1e-5)
        if a["evaluated"] and b["evaluated"]:
            assert a["bypass_T"] == pytest.approx(b["bypass_T"], abs=1e-4)
            compared += 1
    # every candidate the pruned search evaluated, the full one evaluated too: their proxies were compared
    assert compared == sum(c["evaluated"] for c in pruned.candidates) > 0


def test_search_rejects_bad_targets(tiny_qwen):
    from palette_lens.errors import DataError, UnknownDomainError

    ps = toy_prompts(_TOPICS, 30, length=(3, 8), numbered=False)
    with pytest.raises(UnknownDomainError):
        search_direction(tiny_qwen, ps, "nope", progress=False)
    with pytest.raises(DataError):
        search_direction(tiny_qwen, ps, "harmless", progress=False)


def test_search_config_override():
    cfg = SearchConfig()
    assert cfg.drop_last_frac == 0.2
    edit, ablate = cfg.resolved(), SearchConfig(intervention="ablate").resolved()
    assert (ablate.kl_max, ablate.bypass_max, ablate.retain) == (0.1, 0.0, "both")
    assert edit.kl_max == float("inf") and edit.bypass_max == -2.0 and edit.retain == "sep"
    assert SearchConfig(kl_max=0.2).resolved().kl_max == 0.2  # explicit settings win
    assert json.dumps(edit.to_dict(), allow_nan=False) and json.dumps(ablate.to_dict(), allow_nan=False)


# ------------------------------------------------------------------ integration: the default model
@pytest.mark.integration
def test_cyber_search_turns_validation_refusal_negative(default_model, prompts):
    """The chosen cyber direction, ablated at every layer, makes the cyber validation prompts comply."""
    others = [d for d in prompts.harmful_domains if d != "cyber"][:2]
    res = search_direction(
        default_model, prompts, "cyber", other_domains=others, n_train=12, top_k=4, n_val=8,
        n_val_other=2, progress=False,
    )
    val = prompts.part("cyber", "val")
    vanilla = refusal_scores(default_model.last_logits(val), res.refusal_ids)
    scores = refusal_scores(
        default_model.last_logits(val, hooks=ablation_hooks(default_model, res.chosen.vector)), res.refusal_ids
    )
    assert float(scores.mean()) < 0.0
    # not just "already below zero": the ablation moves refusal mass off R by a wide margin
    assert float(scores.mean()) < float(vanilla.mean()) - 1.0
    # and the score the search selects on (the bake's one-block edit) drops by a wide margin too
    assert res.chosen_row["bypass_T"] < res.vanilla["bypass_T"] - 1.0


# ------------------------------------------------------------------ command line
def test_search_command_writes_json_directions_and_figures(tiny_qwen, tmp_path, monkeypatch):
    from palette_lens.cli.app import main
    from palette_lens.models.copies import plain_hf_model

    model_dir = tmp_path / "model"
    plain_hf_model(tiny_qwen).save_pretrained(model_dir)
    tiny_qwen.tokenizer.save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ps = toy_prompts(_TOPICS, 30, length=(3, 8), numbered=False)
    with open(data_dir / "toy.jsonl", "w") as f:
        for d in ps.domains:
            for p in ps.prompts(d):
                f.write(json.dumps({"prompt": p, "domain": d}) + "\n")
    monkeypatch.setenv("PALETTE_LENS_DATA", str(data_dir))
    out = tmp_path / "out"
    code = main(["search", "--target", "cyber", "--model", str(model_dir), "--top-k", "2", "--views-every", "2",
                 "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "search.json").read_text())
    assert {"candidates", "pareto", "chosen"} <= set(doc)
    assert sum(c["evaluated"] for c in doc["candidates"]) == 2
    assert Direction.load(out / "directions" / "cyber.json").layer == doc["chosen"]["layer"]
    html = (out / "figures.html").read_text()
    assert html.count("<section") == 4 and "Pareto" in html
    sep = json.loads((out / "separation.json").read_text())
    assert len(sep["layers"]) == tiny_qwen.n_layers
    # a wrong target is a one-line user error
    assert main(["search", "--target", "nope", "--model", str(model_dir), "--out", str(out)]) == 2
