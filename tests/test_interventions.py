"""Interventions: directional ablation and activation addition as scoped hooks (tiny models, no downloads)."""

from __future__ import annotations

import pytest
import torch

from palette_lens.models.hooks import ablate, ablation_hooks, add, addition_hooks

PROMPTS = ["How do I sort a list of numbers in Python?", "Write a short poem about the sea.", "hi"]


def _sites(model) -> list[str]:
    return [model.resid_pre_hook(l) for l in range(model.n_layers)] + [f"blocks.{model.n_layers - 1}.hook_out"]


def _no_hooks_left(model) -> bool:
    return all(not hp._forward_hooks and not hp.fwd_hooks for hp in model.bridge.hook_dict.values())


def _direction(model, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(model.d_model, generator=gen)


@pytest.mark.parametrize("name", ["tiny_qwen", "tiny_llama"])
def test_ablation_zeroes_projection_at_every_site_and_changes_logits(name, request):
    model = request.getfixturevalue(name)
    r = _direction(model)
    unit = r / r.norm()
    seen: dict[str, list[torch.Tensor]] = {}

    def capture(site):
        def hook(act, hook=None):  # noqa: ARG001
            seen.setdefault(site, []).append(act.detach().clone())
            return act

        return hook

    vanilla = model.last_logits(PROMPTS)
    before: dict[str, list[torch.Tensor]] = {}
    with model.hooks([(s, capture(s)) for s in _sites(model)]):
        model.last_logits(PROMPTS)
    before, seen = seen, {}
    # capture hooks run after the ablation hooks on the same hook point
    hooks = ablation_hooks(model, r) + [(s, capture(s)) for s in _sites(model)]
    with model.hooks(hooks):
        ablated = model.last_logits(PROMPTS)
    assert set(seen) == set(_sites(model))
    for site, acts in seen.items():
        for act, ref in zip(acts, before[site]):
            proj = act.float() @ unit
            assert proj.abs().max() <= 1e-4 * act.norm(dim=-1).max()
            # the site was not trivially zero before the ablation
            assert (ref.float() @ unit).abs().max() > 1e-3
    assert not torch.allclose(ablated, vanilla, atol=1e-4)
    assert _no_hooks_left(model)


def test_ablation_at_selected_layers_only(tiny_qwen):
    hooks = ablation_hooks(tiny_qwen, _direction(tiny_qwen), layers=[1])
    assert [h[0] for h in hooks] == [tiny_qwen.resid_pre_hook(1)]
    hooks = ablation_hooks(tiny_qwen, _direction(tiny_qwen))
    assert len(hooks) == tiny_qwen.n_layers + 1  # every resid_pre plus the final residual


def test_hooks_removed_after_exit_and_after_exception(tiny_qwen):
    r = _direction(tiny_qwen)
    vanilla = tiny_qwen.last_logits(PROMPTS)
    with ablate(tiny_qwen, r):
        assert not _no_hooks_left(tiny_qwen)
        inside = tiny_qwen.last_logits(PROMPTS)
    assert _no_hooks_left(tiny_qwen)
    assert not torch.allclose(inside, vanilla, atol=1e-4)
    assert torch.allclose(tiny_qwen.last_logits(PROMPTS), vanilla, atol=1e-6)

    with pytest.raises(RuntimeError, match="boom"):
        with add(tiny_qwen, r, layer=1, coeff=8.0):
            tiny_qwen.last_logits(PROMPTS[:1])
            raise RuntimeError("boom")
    assert _no_hooks_left(tiny_qwen)
    assert torch.allclose(tiny_qwen.last_logits(PROMPTS), vanilla, atol=1e-6)


def test_addition_adds_the_vector_at_one_layer(tiny_llama):
    r = _direction(tiny_llama, 3)
    site = tiny_llama.resid_pre_hook(2)
    got = {}

    def capture(act, hook=None):  # noqa: ARG001
        got.setdefault("acts", []).append(act.detach().clone())
        return act

    with tiny_llama.hooks([(site, capture)]):
        tiny_llama.last_logits(PROMPTS[:1])
    base = got.pop("acts")[0]
    with tiny_llama.hooks(addition_hooks(tiny_llama, r, layer=2, coeff=0.5) + [(site, capture)]):
        tiny_llama.last_logits(PROMPTS[:1])
    # layer 2's input is the sum of earlier writes, unchanged by an addition at layer 2 itself
    assert torch.allclose(got["acts"][0], base + 0.5 * r, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_qwen", "tiny_llama"])
def test_hooks_fire_during_generation_with_kv_cache(name, request):
    model = request.getfixturevalue(name)
    r = _direction(model, 5) * 50.0
    seq_lens: list[int] = []

    def count(act, hook=None):  # noqa: ARG001
        seq_lens.append(act.shape[1])
        return act

    vanilla = model.generate(PROMPTS[:2], max_new_tokens=6, batch_size=2)
    site = model.resid_pre_hook(1)
    with model.hooks(addition_hooks(model, r, layer=1) + [(site, count)]):
        steered = model.generate(PROMPTS[:2], max_new_tokens=6, batch_size=2)
    # one call for the prompt, then one per new token fed alone through the KV cache
    assert seq_lens[0] > 1 and 1 in seq_lens[1:]
    assert steered != vanilla
    # ablation of a direction the residual stream really uses (its mean at the last position)
    from palette_lens.models.residuals import collect_residuals

    main = collect_residuals(model, PROMPTS, desc=None).mean()[1:, -1].mean(0).float()
    seq_lens.clear()
    with model.hooks(ablation_hooks(model, main) + [(site, count)]):
        ablated = model.generate(PROMPTS[:2], max_new_tokens=6, batch_size=2)
    assert 1 in seq_lens[1:]
    assert ablated != vanilla
    assert _no_hooks_left(model)
    assert model.generate(PROMPTS[:2], max_new_tokens=6, batch_size=2) == vanilla
