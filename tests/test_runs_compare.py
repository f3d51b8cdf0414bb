"""Run folders (make / load), before-after comparisons and the notebook figures, on a tiny model."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from helpers import random_adapter, toy_prompts

from palette_lens.errors import AdapterMismatchError, PaletteError
from palette_lens.evaluate.compare import (
    completions_side_by_side,
    mean_scores,
    refusal_rates,
    scores_by_domain,
    variant_context,
)
from palette_lens.models.hooks import ablation_hooks
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.pipeline.runs import load_or_make_run, load_run, make_run
from palette_lens.viz.bake import bake_history_figure, before_after_figure
from palette_lens.viz.common import table_figure
from palette_lens.viz.evaluate import latency_figure, leakage_figure

TOPICS = {
    "cyber": "malware virus network password attack",
    "hate": "sorry cannot help AI assist",
    "harmless": "recipe pancakes poem sea wind morning",
    "borderline": "kill process python program sort",
}
SMALL = {"search": {"n_train": 6, "top_k": 2, "n_val": 3, "n_val_other": 1, "n_proxy": 2},
         "bake": {"steps": 4, "eval_every": 2, "max_per_group": 6, "val_per_domain": 2, "batch_size": 4}}


@pytest.fixture(scope="module")
def tiny_run_dir(tiny_qwen, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    art = make_run(tiny_qwen, toy_prompts(TOPICS, 16), out, ["cyber", "hate"], progress=False, **SMALL)
    return out, art


# ---------------------------------------------------------------------- run folders
def test_make_run_writes_the_pipeline_layout(tiny_qwen, tiny_run_dir):
    out, art = tiny_run_dir
    assert art.made and art.domains == ["cyber", "hate"]
    assert RunFolder(out).adapter_domains() == ["cyber", "hate"]
    for d in ("cyber", "hate"):
        assert (out / "directions" / f"{d}.json").is_file() and (out / "search" / f"{d}.json").is_file()
        assert (out / "adapters" / d / "adapter_model.safetensors").is_file()
        assert (out / "adapters" / d / "bake.json").is_file()
        assert art.adapters[d].layer == art.directions[d].layer  # baked where the direction was read
    assert (out / "run.json").is_file()


def test_load_run_reads_back_the_same_adapters(tiny_qwen, tiny_run_dir):
    out, art = tiny_run_dir
    again = load_run(out, tiny_qwen)
    assert not again.made and again.domains == art.domains
    for d in art.domains:
        for name, delta in art.adapters[d].deltas().items():
            torch.testing.assert_close(again.adapters[d].deltas()[name], delta)
        torch.testing.assert_close(again.directions[d].vector, art.directions[d].vector)
    only = load_or_make_run(str(out), tiny_qwen, toy_prompts(TOPICS, 16), ["hate"])
    assert only.domains == ["hate"] and not only.made


def test_load_run_errors(tiny_qwen, tiny_llama, tiny_run_dir, tmp_path):
    out, _ = tiny_run_dir
    with pytest.raises(PaletteError, match="holds no adapters"):
        load_run(tmp_path)
    with pytest.raises(PaletteError, match="no adapter for violence"):
        load_run(out, domains=["violence"])
    with pytest.raises(AdapterMismatchError):
        load_run(out, tiny_llama)
    with pytest.raises(PaletteError, match="no run folder"):
        load_or_make_run("", tiny_qwen, toy_prompts(TOPICS, 16), [])


def test_load_or_make_run_bakes_when_no_folder(tiny_qwen, tmp_path):
    art = load_or_make_run("", tiny_qwen, toy_prompts(TOPICS, 16), ["cyber"], out=tmp_path / "r", progress=False, **SMALL)
    assert art.made and art.folder == tmp_path / "r" and RunFolder(tmp_path / "r").adapter_domains() == ["cyber"]


# ---------------------------------------------------------------------- comparisons
PROMPTS = {"cyber": ["malware virus attack", "network password"], "harmless": ["recipe pancakes poem"]}


def test_scores_by_domain_under_an_ablation(tiny_qwen):
    before = {n: p.detach().clone() for n, p in tiny_qwen.hf_model.named_parameters()}
    direction = torch.randn(tiny_qwen.d_model, generator=torch.Generator().manual_seed(0))
    ids = [5, 6, 7]
    s = scores_by_domain(tiny_qwen, PROMPTS, {"vanilla": None, "ablated": ablation_hooks(tiny_qwen, direction)}, ids)
    assert set(s) == {"cyber", "harmless"} and len(s["cyber"]["vanilla"]) == 2
    assert not np.allclose(s["cyber"]["vanilla"], s["cyber"]["ablated"])  # the hooks fired
    again = scores_by_domain(tiny_qwen, PROMPTS, {"vanilla": None}, ids)  # hooks were removed
    np.testing.assert_allclose(again["cyber"]["vanilla"], s["cyber"]["vanilla"], rtol=1e-5, atol=1e-5)
    m = mean_scores(s)
    assert m["cyber"]["vanilla"] == pytest.approx(sum(s["cyber"]["vanilla"]) / 2)
    for n, p in tiny_qwen.hf_model.named_parameters():
        assert torch.equal(p, before[n])


def test_variant_context_accepts_callables(tiny_qwen):
    entered = []

    class Ctx:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            entered.append(False)

    with variant_context(tiny_qwen, lambda: Ctx()):
        assert entered == [True]
    assert entered == [True, False]


def test_completions_side_by_side_rows(tiny_qwen):
    direction = torch.randn(tiny_qwen.d_model, generator=torch.Generator().manual_seed(1)) * 50
    rows = completions_side_by_side(
        tiny_qwen, PROMPTS, {"vanilla": None, "ablated": ablation_hooks(tiny_qwen, direction)}, max_new_tokens=6
    )
    assert [r["domain"] for r in rows] == ["cyber", "cyber", "harmless"]
    assert {"prompt", "vanilla", "vanilla refused", "ablated", "ablated refused"} <= set(rows[0])
    assert any(r["vanilla"] != r["ablated"] for r in rows)
    rates = refusal_rates(rows, "vanilla")
    assert set(rates) == {"cyber", "harmless"} and all(0.0 <= v <= 1.0 for v in rates.values())


# ---------------------------------------------------------------------- notebook figures
def test_table_figure_formats_cells():
    fig = table_figure([{"a": 0.123456, "b": "text", "c": None}, {"a": float("nan"), "b": 3, "c": True}],
                       title="t", digits=2)
    cells = fig.data[0].cells.values
    assert list(cells[0]) == ["0.12", "—"] and list(cells[1]) == ["text", "3"] and list(cells[2]) == ["—", "True"]
    assert "<b>a</b>" in fig.data[0].header.values[0]
    assert table_figure([], title="empty").data[0].cells.values == ()


def test_before_after_figure_groups_by_variant():
    fig = before_after_figure({"cyber": {"before": [1.0, 2.0], "after": [-1.0, -2.0]},
                               "harmless": {"before": [-3.0], "after": [-3.1]}})
    assert [t.name for t in fig.data] == ["before", "after"]
    assert list(fig.data[1].x) == ["cyber", "cyber", "harmless"] and list(fig.data[1].y) == [-1.0, -2.0, -3.1]


def test_bake_history_leakage_and_latency_figures():
    hist = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4, "val": {"p_target": 0.3, "retain_mean": 0.9,
                                                                       "retain_min": 0.8, "kl_harmless": 0.01}}]
    fig = bake_history_figure(hist)
    assert list(fig.data[0].y) == [0.5, 0.4] and list(fig.data[1].x) == [2]
    fig = leakage_figure(["vanilla", "cyber"], ["cyber", "hate"], [[0.9, 0.8], [0.1, None]],
                         authorized={"cyber": ("cyber",)})
    assert isinstance(fig.data[0], go.Heatmap) and np.isnan(fig.data[0].z[1][1])
    assert len(fig.layout.shapes) == 1  # the authorized cell is outlined
    fig = latency_figure({"vanilla": 10.0, "merged": 10.5})
    assert "×1.05" in fig.data[0].text[1]


def test_scores_equal_plain_last_logits(tiny_qwen):
    from palette_lens.adapters.apply import adapters_applied
    from palette_lens.refusal.tokens import refusal_scores

    ids = [5, 6, 7]
    adapter = random_adapter(tiny_qwen, 1, 3, "cyber", scale=0.3)
    flat = [p for ps in PROMPTS.values() for p in ps]
    s = scores_by_domain(tiny_qwen, PROMPTS, {"vanilla": None, "adapted": lambda: adapters_applied(tiny_qwen, [adapter])}, ids)
    want = refusal_scores(tiny_qwen.last_logits(flat), ids)
    with adapters_applied(tiny_qwen, [adapter]):
        want_adapted = refusal_scores(tiny_qwen.last_logits(flat), ids)
    got = [v for d in PROMPTS for v in s[d]["vanilla"]]
    got_adapted = [v for d in PROMPTS for v in s[d]["adapted"]]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got_adapted, want_adapted.numpy(), atol=1e-4, rtol=1e-4)
    assert not np.allclose(got, got_adapted, atol=1e-3)
