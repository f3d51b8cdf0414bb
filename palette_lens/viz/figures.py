"""Plotly figures of the search, the layer-wise domain views and the notebooks (tables, before/after
scores, bake history, leakage, latency). Figures are returned, never shown."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from palette_lens.geometry.separation import Embedding2D
    from palette_lens.search.result import SearchResult

OBJECTIVE_LABELS = {
    "bypass_T": "bypass_T (target refusal score, ablated) ↓",
    "retain_N": "retain_N (non-target refusal score, ablated) ↑",
    "sep_N": "sep_N (target vs non-target AUC at block input) ↑",
    "kl_H": "kl_H (harmless first-token KL) ↓",
    "proxy": "proxy (estimated bypass_T) ↓",
    "rel_norm": "‖r‖ / ‖h‖",
}


def domain_colors(domains: Sequence[str]) -> dict[str, str]:
    """A stable colour per domain (harmless grey, borderline black).

    Harmful domains take the plotly D3 (then Set2) colours in the order given, so the same list gives the
    same colours in every figure.

    Args:
        domains: the domains, in order.

    Returns:
        domain → hex colour.

    Examples:
        >>> domain_colors(["cyber", "hate", "harmless"])
        {'cyber': '#1F77B4', 'hate': '#FF7F0E', 'harmless': '#9e9e9e'}
    """
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


def figures_html(figures: dict[str, go.Figure], title: str = "palette-lens") -> str:
    """One self-contained HTML page holding every figure (plotly.js inlined once: works offline).

    Args:
        figures: name → figure (the name becomes the section's ``id``), in page order.
        title: the page title and heading.

    Returns:
        The HTML page as a string.

    Examples:
        >>> page = figures_html({"latency": latency_figure({"vanilla": 40.0})}, title="demo")
        >>> page.startswith("<!DOCTYPE html>"), '<section id="latency">' in page
        (True, True)
    """
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
    """Write all ``figures`` into one self-contained HTML file at ``path`` (atomically); returns the path.

    Args:
        figures: name → figure, in page order.
        path: the HTML file to write (``str`` or :class:`~pathlib.Path`).
        title: the page title and heading.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Examples:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "figures.html"
        >>> write_figures({"latency": latency_figure({"vanilla": 40.0})}, path).name
        'figures.html'
    """
    from palette_lens.util.atomic import atomic_write_text

    return atomic_write_text(path, figures_html(figures, title))


# --------------------------------------------------------------------- notebook figures
def table_figure(
    rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None, digits: int = 3
) -> go.Figure:
    """A plotly table of ``rows`` (dicts sharing keys); floats rounded to ``digits``, long text wrapped.

    Args:
        rows: one dict per row.
        columns: the keys to show, in order (default: the keys of the first row).
        title: figure title.
        digits: decimals of float cells.

    Returns:
        A plotly table figure; ``None`` and NaN cells show as ``—``.

    Examples:
        >>> fig = table_figure([{"domain": "cyber", "rate": 0.125}, {"domain": "bio", "rate": None}])
        >>> fig.data[0].cells.values
        (['cyber', 'bio'], ['0.125', '—'])
    """
    import plotly.graph_objects as go

    columns = list(columns) if columns is not None else (list(rows[0]) if rows else [])

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.{digits}f}"
        if v is None:
            return "—"
        return str(v)

    values = [[cell(r.get(c)) for r in rows] for c in columns]
    longest = max((len(v) for col in values for v in col), default=10)
    fig = go.Figure(go.Table(
        header=dict(values=[f"<b>{c}</b>" for c in columns], align="left", fill_color="#e8e8e8"),
        cells=dict(values=values, align="left"),
    ))
    height = 60 + 28 * len(rows) * max(1, min(6, longest // 60 + 1)) + (40 if title else 0)
    fig.update_layout(title=title, height=min(900, max(160, height)), margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig


def before_after_figure(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    title: str = "",
    yaxis_title: str = "first-token refusal score (log-odds)",
    zero_line: bool = True,
) -> go.Figure:
    """Grouped box plots of per-prompt values per domain, one box per variant (e.g. before / after).

    Args:
        values: domain → variant name → per-prompt values (every domain should have the same variants).
        title: figure title.
        yaxis_title: label of the values.
        zero_line: draw y = 0 (log-odds 0: refusal tokens hold half of the first-token mass).

    Returns:
        A plotly box figure with one trace per variant.

    Examples:
        >>> values = {"cyber": {"before": [2.0, 3.0], "after": [-1.0, -2.0]}}   # e.g. mean_scores input
        >>> [trace.name for trace in before_after_figure(values, title="cyber adapter").data]
        ['before', 'after']
    """
    import plotly.graph_objects as go

    variants = list(dict.fromkeys(v for per in values.values() for v in per))
    colors = ["#7f7f7f", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    fig = go.Figure()
    for k, name in enumerate(variants):
        xs: list[str] = []
        ys: list[float] = []
        for dom, per in values.items():
            vals = [float(v) for v in per.get(name, [])]
            xs += [dom] * len(vals)
            ys += vals
        fig.add_box(x=xs, y=ys, name=name, marker_color=colors[k % len(colors)], boxpoints="all", jitter=0.3,
                    pointpos=0)
    if zero_line:
        fig.add_hline(y=0.0, line=dict(color="grey", dash="dot"))
    fig.update_layout(title=title, boxmode="group", yaxis_title=yaxis_title, height=420, width=max(560, 110 * len(values)))
    return fig


def bake_history_figure(history: Sequence[dict], title: str = "Bake: training loss and validation") -> go.Figure:
    """Training loss per step and, at checkpoints, the validation refusal mass on target prompts and the
    retention of the other domains (from :class:`palette_lens.bake.train.BakeResult.history`).

    Args:
        history: one dict per logged step (``step``, ``loss``; checkpoints also ``val`` with ``p_target``,
            ``retain_mean``, ``retain_min``, ``kl_harmless``).
        title: figure title.

    Returns:
        A plotly figure with two panels: loss, and the validation metrics.

    Examples:
        >>> history = [{"step": 0, "loss": 0.5}, {"step": 30, "loss": 0.2, "val": {"p_target": 0.3}}]
        >>> len(bake_history_figure(history).data)   # loss + four validation metrics
        5
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss (1 − cos)", "validation (first token)"))
    fig.add_scatter(x=[h["step"] for h in history], y=[h["loss"] for h in history], mode="lines", name="loss",
                    row=1, col=1)
    checks = [h for h in history if "val" in h]
    steps = [h["step"] for h in checks]
    for key, label in (("p_target", "target refusal mass"), ("retain_mean", "others kept (mean ratio)"),
                       ("retain_min", "others kept (worst ratio)"), ("kl_harmless", "harmless KL")):
        fig.add_scatter(x=steps, y=[h["val"].get(key) for h in checks], mode="lines+markers", name=label, row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, height=380, width=900)
    return fig


def leakage_figure(
    rows: Sequence[str], columns: Sequence[str], matrix: Sequence[Sequence[float | None]],
    authorized: Mapping[str, Sequence[str]] | None = None, title: str = "Refusal rate: profile × domain",
) -> go.Figure:
    """Heatmap of refusal rates (rows: profiles or variants, columns: domains), values written in the cells.

    Cells of a row's authorized domains (``authorized``: row → domains) are outlined: there refusal should
    be low; everywhere else (harmful columns) it should stay at the vanilla level.

    Args:
        rows: row names (profiles or variants).
        columns: column names (domains).
        matrix: [n_rows][n_columns] refusal rates in [0, 1]; None leaves a cell empty.
        authorized: row → domains whose cells are outlined.
        title: figure title.

    Returns:
        A plotly heatmap figure.

    Examples:
        >>> rows, cols, m = ["vanilla", "cyber"], ["cyber", "bio"], [[0.9, 0.95], [0.1, None]]
        >>> leakage_figure(rows, cols, m, authorized={"cyber": ["cyber"]}).data[0].text
        (['90%', '95%'], ['10%', ''])
    """
    return _share_heatmap(rows, columns, matrix, authorized or {}, title, "refusal", "Reds")


def gate_readings_figure(
    readings: Mapping[str, Mapping[str, float]], authorized: Sequence[str],
    title: str = "How the domain gate reads each group of prompts",
) -> go.Figure:
    """Heatmap of a domain gate's mean class probabilities (rows: prompt groups, columns: domains), from
    :meth:`palette_lens.gate.domain_gate.DomainGate.readings`; the authorized domains' columns are outlined (their sum is what
    opens the gate).

    Args:
        readings: group → class → mean probability (``DomainGate.readings`` output).
        authorized: the gate's authorized domains (outlined in every row).
        title: figure title.

    Returns:
        A plotly heatmap figure.

    Examples:
        >>> readings = {"cyber prompts": {"cyber": 0.9, "bio": 0.1}}
        >>> gate_readings_figure(readings, ["cyber"]).data[0].z
        ([0.9, 0.1],)
    """
    rows = list(readings)
    columns = list(dict.fromkeys(c for r in readings.values() for c in r))
    matrix = [[readings[r].get(c) for c in columns] for r in rows]
    return _share_heatmap(rows, columns, matrix, {r: tuple(authorized) for r in rows}, title, "probability",
                          "Blues")


def _share_heatmap(
    rows: Sequence[str], columns: Sequence[str], matrix: Sequence[Sequence[float | None]],
    outlined: Mapping[str, Sequence[str]], title: str, value_title: str, colorscale: str,
) -> go.Figure:
    """A heatmap of shares in [0, 1] with the values in the cells and some cells per row outlined."""
    import plotly.graph_objects as go

    z = [[float("nan") if v is None else float(v) for v in row] for row in matrix]
    text = [["" if v is None else f"{v:.0%}" for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(columns), y=list(rows), text=text, texttemplate="%{text}", zmin=0.0, zmax=1.0,
        colorscale=colorscale, colorbar=dict(title=value_title),
        hovertemplate="%{y}<br>%{x}: %{z:.2f}<extra></extra>",
    ))
    for i, r in enumerate(rows):
        for d in outlined.get(r, ()):
            if d in columns:
                j = list(columns).index(d)
                fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                              line=dict(color="#1f77b4", width=3))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_layout(title=title, height=120 + 40 * len(rows), width=max(520, 90 * len(columns) + 200))
    return fig


def latency_figure(ms_per_token: Mapping[str, float], title: str = "Latency per generated token") -> go.Figure:
    """Bar chart of milliseconds per token per variant, with the ratio to the first variant as text.

    Args:
        ms_per_token: variant → milliseconds per token (e.g. ``LatencyResult.ms_per_token``); the first
            variant is the reference.
        title: figure title.

    Returns:
        A plotly bar figure.

    Examples:
        >>> latency_figure({"vanilla": 40.0, "cyber": 42.0}).data[0].text
        ('40 ms (×1.00)', '42 ms (×1.05)')
    """
    import plotly.graph_objects as go

    names = list(ms_per_token)
    ref = ms_per_token[names[0]] if names else 1.0
    fig = go.Figure(go.Bar(
        x=names, y=[ms_per_token[n] for n in names],
        text=[f"{ms_per_token[n]:.0f} ms (×{ms_per_token[n] / ref:.2f})" for n in names], textposition="outside",
    ))
    fig.update_layout(title=title, yaxis_title="ms / token (median)", height=380, width=max(480, 130 * len(names)))
    return fig
