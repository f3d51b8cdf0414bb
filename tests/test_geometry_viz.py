"""Layer-wise domain views: separation numbers, plotly figures, the ipywidgets explorer."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from palette_lens.geometry.separation import (
    layer_data,
    layer_separation,
    probe_accuracy,
    separation_table,
    silhouette,
    tsne_layers,
)
from palette_lens.models.residuals import Residuals
from palette_lens.viz.common import figures_html
from palette_lens.viz.geometry import separation_figure, tsne_figure
from palette_lens.viz.search import objective_heatmaps, pareto_figure

DOMAINS = ("cyber", "hate", "violence", "harmless")


def synthetic_residuals(n: int = 16, d: int = 24, layers: int = 3, seed: int = 0) -> dict[str, Residuals]:
    """Layer 0: pure noise; layer 1: weakly separated; layer 2: every domain at its own centre."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(DOMAINS), d, generator=gen) * 6.0
    out = {}
    for k, dom in enumerate(DOMAINS):
        v = torch.randn(n, layers, 2, d, generator=gen)
        for layer in range(1, layers):
            v[:, layer] += centres[k] * (layer / (layers - 1))
        out[dom] = Residuals(v, tuple(range(layers)), (-2, -1))
    return out


def test_layer_data_stacks_domains():
    res = synthetic_residuals()
    data = layer_data(res, position=-1)
    assert data.vectors.shape == (4 * 16, 3, 24)
    assert data.domains == list(DOMAINS)
    assert np.allclose(data.at(2).mean(0), 0.0, atol=1e-6)  # standardised


def test_separation_grows_with_layer_and_probes_beat_chance():
    rows = layer_separation(synthetic_residuals(), target="cyber", position=-1, progress=False)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert rows[2]["silhouette"] > 0.5 > abs(rows[0]["silhouette"])
    assert rows[2]["probe_all"] > 0.95
    assert rows[0]["probe_all"] < 0.6  # noise: near the 0.25 chance level
    assert set(rows[2]["probe_vs"]) == {"hate", "violence", "harmless"}
    assert rows[2]["probe_vs_min"] > 0.95
    assert rows[0]["probe_vs_mean"] < 0.8


def test_separation_table_targets_vs_rest():
    res = synthetic_residuals()
    harmful = ["cyber", "hate", "violence"]
    rows = separation_table(res, harmful, silhouette_domains=harmful, position=-1, progress=False)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert set(rows[2]["probe_vs_rest"]) == set(harmful)
    assert rows[2]["probe_vs_rest_min"] > 0.95 and rows[2]["probe_all"] > 0.95
    assert rows[0]["probe_vs_rest_min"] < 0.8  # noise: balanced accuracy near 0.5 despite 1:2 classes
    assert rows[0]["chance_all"] == 0.25  # four equal domains in the multiclass probe
    # the silhouette covers only the harmful domains: harmless added at its own centre changes it
    with_harmless = separation_table(res, harmful, layers=[2], position=-1, progress=False)[0]
    assert with_harmless["silhouette"] != rows[2]["silhouette"]
    # an unbalanced target-vs-rest problem is scored with balanced accuracy: a constant guess gets 0.5
    x = np.random.default_rng(0).normal(size=(40, 3))
    y = np.array([True] * 8 + [False] * 32)
    assert probe_accuracy(x, y, balanced=True) < 0.7 < probe_accuracy(x, y)


def test_probe_and_silhouette_degenerate_inputs():
    x = np.random.default_rng(0).normal(size=(10, 4))
    assert np.isnan(probe_accuracy(x, np.array(["a"] * 10)))
    assert np.isnan(silhouette(x, np.array(["a"] * 10)))


def test_tsne_layers_and_figure():
    res = synthetic_residuals()
    emb = tsne_layers(res, layers=[0, 2], position=-1, progress=False)
    assert set(emb.coords) == {0, 2} and emb.coords[2].shape == (64, 2)
    fig = tsne_figure(emb, cols=2)
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 2 * len(DOMAINS)  # one trace per domain per panel
    # the separated layer's embedding keeps domains apart: nearest neighbour shares the label
    xy, labels = emb.coords[2], emb.labels
    dist = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(len(xy)) * 1e9
    assert (labels[dist.argmin(1)] == labels).mean() > 0.9


def test_separation_figure_traces():
    rows = layer_separation(synthetic_residuals(), target="cyber", progress=False)
    fig = separation_figure(rows, "cyber")
    names = [t.name for t in fig.data]
    assert any("silhouette" in n for n in names) and any("worst" in n for n in names)
    assert list(fig.data[0].x) == [0, 1, 2]


def _fake_result():
    from palette_lens.search.direction import Direction
    from palette_lens.search.result import SearchConfig, SearchResult

    rows = []
    rng = np.random.default_rng(0)
    for layer in range(5):
        for pos in (-2, -1):
            ev = 1 <= layer <= 3
            row = {"layer": layer, "position": pos, "eligible": ev, "evaluated": ev, "proxy": float(-layer),
                   "sep_N": float(1 - 0.1 * layer), "norm": 1.0}
            if ev:
                row.update(bypass_T=float(-layer + rng.normal() * 0.1), retain_N=float(-layer / 2), kl_H=0.01 * layer,
                           retain=float(1 - 0.2 * layer), pareto=layer != 2)
            rows.append(row)
    chosen = Direction(torch.ones(4), 3, -1, "cyber")
    path = [{"alpha": a, "layer": 1 if a < 0.5 else 3, "position": -1} for a in (0.0, 0.5, 1.0)]
    return SearchResult("cyber", rows, [r for r in rows if r.get("pareto")], chosen, {}, path, SearchConfig())


def test_search_figures_and_self_contained_html():
    res = _fake_result()
    heat = objective_heatmaps(res)
    heatmaps = [t for t in heat.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == 5  # proxy, bypass_T, retain_N, sep_N, kl_H
    z = np.array(heatmaps[1].z, dtype=float)  # bypass_T: only evaluated layers have values
    assert z.shape == (5, 2) and np.isnan(z[0]).all() and not np.isnan(z[1:4]).any()
    par = pareto_figure(res)
    names = [t.name for t in par.data]
    assert "Pareto front" in names and "α path" in names
    front = next(t for t in par.data if t.name == "Pareto front")
    assert len(front.x) == sum(1 for c in res.candidates if c.get("pareto"))
    html = figures_html({"heatmaps": heat, "pareto": par}, title="t")
    assert html.count("<section") == 2
    assert not re.findall(r"<script[^>]*\bsrc=", html)  # no external script: works offline
    assert len(html) > 1_000_000  # plotly.js inlined once (works offline)


def test_layer_explorer_slider_updates_figure():
    pytest.importorskip("anywidget")
    from palette_lens.viz.widgets import LayerExplorer

    ex = LayerExplorer(synthetic_residuals(), position=-1, method="pca", layer=0)
    before = [np.array(t.x, dtype=float).copy() for t in ex.figure.data]
    title0 = ex.figure.layout.title.text
    ex.slider.value = 2  # drive the slider as a user would
    after = [np.array(t.x, dtype=float) for t in ex.figure.data]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert "layer 2" in ex.figure.layout.title.text and title0 != ex.figure.layout.title.text
    assert 2 in ex._cache and 0 in ex._cache
