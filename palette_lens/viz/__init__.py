"""Plotly figures of every stage (``pl.viz``); figures are returned, never shown. Widgets: ``pl.widgets``.

Every figure function lives in :mod:`palette_lens.viz.figures` and is imported on first access (PEP 562),
so ``import palette_lens.viz`` loads neither plotly nor torch.

Example:
    >>> import palette_lens as pl
    >>> fig = pl.viz.separation_figure(pl.layer_separation(residuals))  # doctest: +SKIP
    >>> fig.show()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [  # noqa: RUF022 - grouped by stage
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
    value = getattr(importlib.import_module("palette_lens.viz.figures"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs only
    from palette_lens.viz.figures import (
        bake_history_figure,
        before_after_figure,
        domain_colors,
        figures_html,
        gate_readings_figure,
        latency_figure,
        leakage_figure,
        objective_heatmaps,
        pareto_figure,
        separation_figure,
        table_figure,
        tsne_figure,
        write_figures,
    )
