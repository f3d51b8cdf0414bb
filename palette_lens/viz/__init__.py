"""Plotly figures of every stage (``pl.viz``); figures are returned, never shown. Widgets: ``pl.widgets``.

Every figure function lives in :mod:`palette_lens.viz.common` and is imported on first access (PEP 562),
so ``import palette_lens.viz`` loads neither plotly nor torch.

Example:
    >>> import palette_lens as pl
    >>> fig = pl.viz.separation_figure(pl.layer_separation(residuals))  # doctest: +SKIP
    >>> fig.show()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: figure function → the module that defines it (one module per stage).
_EXPORTS: dict[str, str] = {
    "domain_colors": "palette_lens.viz.common",
    "table_figure": "palette_lens.viz.common",
    "figures_html": "palette_lens.viz.common",
    "write_figures": "palette_lens.viz.common",
    "objective_heatmaps": "palette_lens.viz.search",
    "pareto_figure": "palette_lens.viz.search",
    "tsne_figure": "palette_lens.viz.geometry",
    "separation_figure": "palette_lens.viz.geometry",
    "before_after_figure": "palette_lens.viz.bake",
    "bake_history_figure": "palette_lens.viz.bake",
    "leakage_figure": "palette_lens.viz.evaluate",
    "gate_readings_figure": "palette_lens.viz.evaluate",
    "latency_figure": "palette_lens.viz.evaluate",
}

__all__ = [  # noqa: RUF022 - grouped by stage, as in _EXPORTS
    "domain_colors", "table_figure", "figures_html", "write_figures",
    "objective_heatmaps", "pareto_figure",
    "tsne_figure", "separation_figure",
    "before_after_figure", "bake_history_figure",
    "leakage_figure", "gate_readings_figure", "latency_figure",
]


def __getattr__(name: str) -> Any:
    """Import a figure function on first access (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module 'palette_lens.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs only
    from palette_lens.viz.bake import bake_history_figure, before_after_figure
    from palette_lens.viz.common import domain_colors, figures_html, table_figure, write_figures
    from palette_lens.viz.evaluate import gate_readings_figure, latency_figure, leakage_figure
    from palette_lens.viz.geometry import separation_figure, tsne_figure
    from palette_lens.viz.search import objective_heatmaps, pareto_figure
