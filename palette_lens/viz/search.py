"""Figures of the direction search: objective heatmaps per (layer, position) and the Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from palette_lens.search.result import SearchResult


OBJECTIVE_LABELS = {
    "bypass_T": "bypass_T (target refusal score, ablated) ↓",
    "retain_N": "retain_N (non-target refusal score, ablated) ↑",
    "sep_N": "sep_N (target vs non-target AUC at block input) ↑",
    "kl_H": "kl_H (harmless first-token KL) ↓",
    "proxy": "proxy (estimated bypass_T) ↓",
    "rel_norm": "‖r‖ / ‖h‖",
}


def objective_heatmaps(
    result: SearchResult, objectives: Sequence[str] = ("proxy", "bypass_T", "retain_N", "sep_N", "kl_H")
) -> go.Figure:
    """One heatmap per objective over layer × position; evaluated cells only for causal objectives.

    The chosen candidate is marked with a star on every panel.

    Args:
        result: a search result (:func:`palette_lens.search.direction_search.search_direction`).
        objectives: candidate keys to plot (e.g. ``"rel_norm"`` too); those no candidate has are left out.

    Returns:
        A plotly figure with one [n_layers, n_positions] heatmap per objective.

    Examples:
        >>> found = pl.search_direction(model, prompts, "cyber")                      # doctest: +SKIP
        >>> objective_heatmaps(found, objectives=("bypass_T", "sep_N")).show()        # doctest: +SKIP
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

    Args:
        result: a search result with evaluated candidates (in memory or loaded from ``search.json``).

    Returns:
        A plotly scatter figure.

    Examples:
        >>> found = pl.SearchResult.load("runs/demo/search/cyber")                   # doctest: +SKIP
        >>> pareto_figure(found).show()                                              # doctest: +SKIP
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
