"""ipywidgets explorers for notebooks (the figures are plotly ``FigureWidget``s updated in place)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .activations import Residuals
from .geometry import embed_2d, layer_data, probe_accuracy, silhouette
from .viz import domain_colors


class LayerExplorer:
    """A layer slider driving a 2-D embedding (t-SNE or PCA) of per-prompt residuals coloured by domain.

    Embeddings are computed when a layer is first shown and cached. The title shows the layer's
    silhouette score and (optionally) probe accuracy.

    Example:
        >>> ex = LayerExplorer(residuals, position=-1)
        >>> ex.widget            # display in a notebook
        >>> ex.slider.value = 12 # or drag the slider

    Attributes:
        slider: the ``IntSlider`` of layers.
        figure: the plotly ``FigureWidget`` (one scatter trace per domain).
        widget: the assembled ``VBox`` to display.
    """

    def __init__(
        self,
        residuals: Mapping[str, Residuals],
        domains: Sequence[str] | None = None,
        position: int = -1,
        layers: Sequence[int] | None = None,
        method: str = "tsne",
        probe: bool = False,
        seed: int = 0,
        layer: int | None = None,
    ) -> None:
        import ipywidgets as widgets
        import plotly.graph_objects as go

        self.data = layer_data(residuals, domains, position, layers)
        self.method, self.probe, self.seed = method, probe, seed
        self._cache: dict[int, np.ndarray] = {}
        self.domains = self.data.domains
        colors = domain_colors(self.domains)
        start = layer if layer is not None else self.data.layers[len(self.data.layers) // 2]
        self.figure = go.FigureWidget(
            data=[
                go.Scatter(x=[], y=[], mode="markers", name=d, marker=dict(size=6, color=colors[d]),
                           hovertemplate=f"{d}<extra></extra>")
                for d in self.domains
            ],
            layout=dict(height=480, width=640, xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False)),
        )
        self.slider = widgets.SelectionSlider(
            options=list(self.data.layers), value=start, description="layer", continuous_update=False
        ) if not _contiguous(self.data.layers) else widgets.IntSlider(
            value=start, min=min(self.data.layers), max=max(self.data.layers), step=1,
            description="layer", continuous_update=False,
        )
        self.slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([self.slider, self.figure])
        self.show_layer(start)

    def coords(self, layer: int) -> np.ndarray:
        """[n_prompts, 2] embedding of ``layer`` (cached)."""
        if layer not in self._cache:
            self._cache[layer] = embed_2d(self.data.at(layer), self.method, self.seed)
        return self._cache[layer]

    def show_layer(self, layer: int) -> None:
        """Update the figure to ``layer``."""
        xy = self.coords(layer)
        x = self.data.at(layer)
        title = f"{self.method.upper()} at layer {layer}, position {self.data.position}"
        title += f" — silhouette {silhouette(x, self.data.labels):.2f}"
        if self.probe:
            title += f", probe accuracy {probe_accuracy(x, self.data.labels):.2f}"
        with self.figure.batch_update():
            for trace, d in zip(self.figure.data, self.domains):
                sel = self.data.labels == d
                trace.x = xy[sel, 0]
                trace.y = xy[sel, 1]
            self.figure.layout.title = title

    def _on_change(self, change: dict[str, Any]) -> None:
        self.show_layer(int(change["new"]))


def _contiguous(layers: Sequence[int]) -> bool:
    return list(layers) == list(range(min(layers), max(layers) + 1))


def layer_explorer(residuals: Mapping[str, Residuals], **kwargs) -> Any:
    """Convenience: build a :class:`LayerExplorer` and return its displayable widget."""
    return LayerExplorer(residuals, **kwargs).widget
