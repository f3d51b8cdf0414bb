"""Figures of the layer-wise domain views: t-SNE per layer and separation (silhouette, probe accuracy) across layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from palette_lens.geometry.separation import Embedding2D
from palette_lens.viz.common import domain_colors


def tsne_figure(emb: Embedding2D, cols: int = 4, title: str | None = None) -> go.Figure:
    """Small multiples: one 2-D embedding per layer, points coloured by domain.

    Args:
        emb: embeddings per layer (:func:`palette_lens.geometry.separation.tsne_layers`).
        cols: panels per row.
        title: figure title (default: the method and position).

    Returns:
        A plotly figure with one scatter panel per layer.

    Examples:
        >>> emb = pl.tsne_layers(residuals, layers=[4, 8, 12, 16])                   # doctest: +SKIP
        >>> tsne_figure(emb, cols=2).show()                                          # doctest: +SKIP
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layers = sorted(emb.coords)
    cols = max(1, min(cols, len(layers)))
    rows = math.ceil(len(layers) / cols)
    domains = list(dict.fromkeys(emb.labels.tolist()))
    colors = domain_colors(domains)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"layer {l}" for l in layers],
                        horizontal_spacing=0.03, vertical_spacing=0.08)
    for k, layer in enumerate(layers):
        r, c = divmod(k, cols)
        xy = emb.coords[layer]
        for d in domains:
            sel = emb.labels == d
            fig.add_trace(
                go.Scatter(
                    x=xy[sel, 0], y=xy[sel, 1], mode="markers", name=d, legendgroup=d, showlegend=k == 0,
                    marker=dict(size=5, color=colors[d]), hovertemplate=f"{d}<extra></extra>",
                ),
                row=r + 1, col=c + 1,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(
        title=title or f"{emb.method.upper()} of residuals at position {emb.position}, by layer",
        height=260 * rows + 80, width=260 * cols + 160,
    )
    return fig


def separation_figure(rows: Sequence[dict], target: str | None = None) -> go.Figure:
    """Silhouette and probe accuracy by layer (line plot).

    Args:
        rows: per-layer rows of :func:`palette_lens.geometry.separation.layer_separation` (``layer``,
            ``silhouette``, ``probe_all``; optionally ``chance_all``, ``probe_vs_mean``, ``probe_vs_min``).
        target: the target domain named in the legend and title.

    Returns:
        A plotly line figure (one trace per score present).

    Examples:
        >>> fig = separation_figure([{"layer": 3, "silhouette": 0.1, "probe_all": 0.8, "chance_all": 0.5}])
        >>> len(fig.data)
        3
    """
    import plotly.graph_objects as go

    layers = [r["layer"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=[r["silhouette"] for r in rows], name="silhouette (all domains)",
                             mode="lines+markers"))
    fig.add_trace(go.Scatter(x=layers, y=[r["probe_all"] for r in rows], name="probe accuracy (all domains)",
                             mode="lines+markers"))
    if rows and "chance_all" in rows[0]:
        fig.add_trace(go.Scatter(x=layers, y=[r["chance_all"] for r in rows], name="chance (all domains)",
                                 mode="lines", line=dict(dash="dot", color="grey")))
    if rows and "probe_vs_mean" in rows[0]:
        fig.add_trace(go.Scatter(x=layers, y=[r["probe_vs_mean"] for r in rows], mode="lines+markers",
                                 name=f"probe {target} vs each other (mean)"))
        fig.add_trace(go.Scatter(x=layers, y=[r["probe_vs_min"] for r in rows], mode="lines+markers",
                                 name=f"probe {target} vs each other (worst)"))
    fig.update_layout(title="Domain separation by layer" + (f" (target {target!r})" if target else ""),
                      xaxis_title="layer", yaxis_title="score", height=420, width=760, yaxis=dict(range=[-0.2, 1.02]))
    return fig
