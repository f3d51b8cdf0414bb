"""Plotly figures of the search and of the layer-wise domain views. Figures are returned, never shown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from .geometry import Embedding2D
    from .search import SearchResult

OBJECTIVE_LABELS = {
    "bypass_T": "bypass_T (target refusal score, ablated) ↓",
    "retain_N": "retain_N (non-target refusal score, ablated) ↑",
    "sep_N": "sep_N (target vs non-target AUC at block input) ↑",
    "kl_H": "kl_H (harmless first-token KL) ↓",
    "proxy": "proxy (estimated bypass_T) ↓",
    "rel_norm": "‖r‖ / ‖h‖",
}


def domain_colors(domains: Sequence[str]) -> dict[str, str]:
    """A stable colour per domain (harmless grey, borderline black)."""
    from plotly.colors import qualitative

    palette = qualitative.D3 + qualitative.Set2
    out, k = {}, 0
    for d in domains:
        if d == "harmless":
            out[d] = "#9e9e9e"
        elif d == "borderline":
            out[d] = "#222222"
        else:
            out[d] = palette[k % len(palette)]
            k += 1
    return out


def objective_heatmaps(
    result: SearchResult, objectives: Sequence[str] = ("proxy", "bypass_T", "retain_N", "sep_N", "kl_H")
) -> go.Figure:
    """One heatmap per objective over layer × position; evaluated cells only for causal objectives.

    The chosen candidate is marked with a star on every panel.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    objectives = [o for o in objectives if any(c.get(o) is not None for c in result.candidates)]
    fig = make_subplots(
        rows=1, cols=len(objectives), shared_yaxes=True, horizontal_spacing=0.03,
        subplot_titles=[OBJECTIVE_LABELS.get(o, o) for o in objectives],
    )
    for k, obj in enumerate(objectives, start=1):
        layers, positions, arr = result.grid(obj)
        reverse = obj in ("bypass_T", "kl_H", "proxy")
        fig.add_trace(
            go.Heatmap(
                z=arr, x=[str(p) for p in positions], y=layers, colorscale="RdBu" if not reverse else "RdBu_r",
                showscale=False, hovertemplate=f"layer %{{y}}<br>position %{{x}}<br>{obj} %{{z:.3f}}<extra></extra>",
            ),
            row=1, col=k,
        )
        fig.add_trace(
            go.Scatter(
                x=[str(result.chosen.position)], y=[result.chosen.layer], mode="markers",
                marker=dict(symbol="star", size=14, color="gold", line=dict(color="black", width=1)),
                name="chosen", showlegend=k == 1, hoverinfo="skip",
            ),
            row=1, col=k,
        )
        fig.update_xaxes(title_text="position", row=1, col=k, type="category")
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(
        title=f"Candidate directions for {result.target!r}: objectives over layer × position",
        height=520, width=max(600, 260 * len(objectives)),
    )
    for ann in fig.layout.annotations:
        ann.font.size = 10
    return fig


def pareto_figure(result: SearchResult) -> go.Figure:
    """bypass_T vs the selection's retention score for evaluated candidates (colour: kl_H).

    The Pareto front is outlined, the α path (the choice for each α) drawn as a line, the choice starred.
    """
    import plotly.graph_objects as go

    ev = [c for c in result.candidates if c.get("evaluated")]
    x = [c["bypass_T"] for c in ev]
    y = [c["retain"] for c in ev]
    text = [f"L{c['layer']} p{c['position']}" for c in ev]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x, y=y, mode="markers", text=text, name="evaluated",
            marker=dict(size=9, color=[c["kl_H"] for c in ev], colorscale="Viridis", showscale=True,
                        colorbar=dict(title="kl_H")),
            hovertemplate="%{text}<br>bypass_T %{x:.2f}<br>retain %{y:.3f}<extra></extra>",
        )
    )
    front = sorted((c for c in ev if c.get("pareto")), key=lambda c: c["bypass_T"])
    fig.add_trace(
        go.Scatter(
            x=[c["bypass_T"] for c in front], y=[c["retain"] for c in front], mode="markers",
            marker=dict(size=15, color="rgba(0,0,0,0)", line=dict(color="crimson", width=2)), name="Pareto front",
            hoverinfo="skip",
        )
    )
    lookup = {(c["layer"], c["position"]): c for c in ev}
    path = [(p["alpha"], lookup[(p["layer"], p["position"])]) for p in result.alpha_path if (p["layer"], p["position"]) in lookup]
    if path:
        fig.add_trace(
            go.Scatter(
                x=[c["bypass_T"] for _, c in path], y=[c["retain"] for _, c in path], mode="lines+markers",
                line=dict(color="orange", dash="dot"), marker=dict(size=5, color="orange"),
                text=[f"α={a:g}: L{c['layer']} p{c['position']}" for a, c in path], name="α path",
                hovertemplate="%{text}<extra></extra>",
            )
        )
    ch = result.chosen_row
    fig.add_trace(
        go.Scatter(
            x=[ch["bypass_T"]], y=[ch.get("retain")], mode="markers", name=f"chosen (α={result.config.alpha:g})",
            marker=dict(symbol="star", size=18, color="gold", line=dict(color="black", width=1)),
        )
    )
    fig.add_vline(x=0.0, line=dict(color="grey", dash="dash"))
    fig.update_layout(
        title=f"{result.target!r}: bypass vs retention (retain = {result.config.retain}), colour = harmless KL",
        xaxis_title="bypass_T (lower: target complies)", yaxis_title="retention score (higher: others still refused)",
        height=500, width=760,
    )
    return fig


def tsne_figure(emb: Embedding2D, cols: int = 4, title: str | None = None) -> go.Figure:
    """Small multiples: one 2-D embedding per layer, points coloured by domain."""
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
    """Silhouette and probe accuracy by layer (line plot)."""
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


def figures_html(figures: dict[str, go.Figure], title: str = "palette-lens") -> str:
    """One self-contained HTML page holding every figure (plotly.js inlined once: works offline)."""
    import html

    parts = []
    for k, (name, fig) in enumerate(figures.items()):
        div = fig.to_html(include_plotlyjs=k == 0, full_html=False, div_id=f"fig-{name}")
        parts.append(f'<section id="{html.escape(name)}">{div}</section>')
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_figures(figures: dict[str, go.Figure], path, title: str = "palette-lens") -> Path:
    """Write all ``figures`` into one self-contained HTML file at ``path`` (atomically); returns the path."""
    from .atomic import atomic_write_text

    return atomic_write_text(path, figures_html(figures, title))
