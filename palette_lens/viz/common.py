"""What every figure shares: a colour per domain, tables as figures, and pages of several figures.

Figures are returned, never shown; the stage figures are in :mod:`palette_lens.viz.search`,
:mod:`palette_lens.viz.geometry`, :mod:`palette_lens.viz.bake` and :mod:`palette_lens.viz.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go


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


