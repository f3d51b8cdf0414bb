"""Figures of an evaluation: the leakage matrix, how a gate reads prompt groups, latency per token."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go


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
