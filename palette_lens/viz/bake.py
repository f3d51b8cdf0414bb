"""Figures of a bake: refusal scores before and after an adapter, and the training history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go


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
