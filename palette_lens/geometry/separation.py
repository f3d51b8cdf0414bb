"""How domains separate in the residual stream, layer by layer: silhouette, linear probes, t-SNE.

Input is per-prompt residuals per domain (:func:`palette_lens.search.candidates.collect_domain_residuals`). All
numbers are computed at one post-instruction position; features are standardised per layer (the residual
stream has a few very large dimensions that would otherwise dominate distances).

The problems are small (tens to hundreds of prompts), so scikit-learn runs them single-threaded
(:func:`single_threaded`): thread pools only add synchronisation there, and on a busy machine their
spin-waiting made a 140-point t-SNE 100× slower (46 s instead of 0.3 s on 2 shared cores).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from palette_lens.models.residuals import Residuals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerData:
    """Per-prompt vectors of several domains at one position.

    Attributes:
        vectors: [n_prompts, n_layers, d_model] float32.
        labels: domain of each prompt.
        layers: the layer of each index of axis 1.
        position: the post-instruction position.
    """

    vectors: np.ndarray
    labels: np.ndarray
    layers: tuple[int, ...]
    position: int

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(self.labels.tolist()))

    def at(self, layer: int, standardize: bool = True) -> np.ndarray:
        """[n_prompts, d_model] features of ``layer`` (z-scored per feature when ``standardize``)."""
        x = self.vectors[:, self.layers.index(layer)].astype(np.float64)
        if standardize:
            x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        return x


def layer_data(
    residuals: Mapping[str, Residuals],
    domains: Sequence[str] | None = None,
    position: int = -1,
    layers: Sequence[int] | None = None,
) -> LayerData:
    """Stack the residuals of ``domains`` (default: all given) at ``position`` for ``layers``."""
    domains = list(domains) if domains is not None else list(residuals)
    first = residuals[domains[0]]
    layers = tuple(first.layers) if layers is None else tuple(layers)
    li = [first.layers.index(l) for l in layers]
    pi = first.positions.index(position)
    xs, labels = [], []
    for d in domains:
        r = residuals[d]
        if len(r) == 0:
            continue
        xs.append(r.vectors[:, li, pi].numpy())
        labels += [d] * len(r)
    return LayerData(np.concatenate(xs).astype(np.float32), np.array(labels), layers, position)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Limit BLAS / OpenMP thread pools (numpy, scipy, scikit-learn) to one thread inside the block."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _folds(labels: np.ndarray, max_folds: int) -> int:
    _, counts = np.unique(labels, return_counts=True)
    return int(max(2, min(max_folds, counts.min())))


def probe_accuracy(
    x: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, c: float = 0.1, balanced: bool = False
) -> float:
    """Cross-validated accuracy of an L2 logistic-regression probe (stratified folds); NaN if a class has < 2.

    With ``balanced`` the score is the balanced accuracy (mean recall per class; chance 1/n_classes), for
    unequal classes such as one domain against all others.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        return float("nan")
    cv = StratifiedKFold(n_splits=_folds(labels, folds), shuffle=True, random_state=seed)
    clf = LogisticRegression(C=c, max_iter=300)
    with warnings.catch_warnings(), single_threaded():
        warnings.simplefilter("ignore")
        scoring = "balanced_accuracy" if balanced else "accuracy"
        return float(cross_val_score(clf, x, labels, cv=cv, scoring=scoring).mean())


def silhouette(x: np.ndarray, labels: np.ndarray, metric: str = "cosine") -> float:
    """Silhouette score of the domain labels (−1..1; higher: domains form tighter, separate clusters)."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    with single_threaded():
        return float(silhouette_score(x, labels, metric=metric))


def layer_separation(
    residuals: Mapping[str, Residuals],
    target: str | None = None,
    domains: Sequence[str] | None = None,
    position: int = -1,
    layers: Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Separation numbers per layer.

    Args:
        residuals: per-domain residuals (e.g. train prompts of every domain).
        target: when given, also probe ``target`` vs each other domain (binary, balanced accuracy is not
            needed: classes are close to equal size).
        domains: the domains to include (default: all in ``residuals``).
        position: the post-instruction position.
        layers: the layers (default: all collected).
        folds: cross-validation setting: the number of folds.
        seed: cross-validation setting: the seed.
        progress: show a progress bar over the layers.

    Returns:
        one dict per layer: ``layer``, ``silhouette`` (all domains, cosine), ``probe_all`` (multiclass CV
        accuracy), ``chance_all``, and with a target ``probe_vs`` ({domain: accuracy}),
        ``probe_vs_mean``, ``probe_vs_min``. Scores are NaN where a class has fewer than 2 prompts.

    Raises:
        KeyError: a domain that ``residuals`` does not hold.
        ValueError: a ``position`` or layer that was not collected.

    Examples:
        >>> import torch
        >>> res = {d: Residuals(torch.randn(10, 2, 1, 8) + i, (3, 4), (-1,)) for i, d in enumerate("ab")}
        >>> rows = layer_separation(res, target="a", progress=False)   # 2 domains, layers 3 and 4
        >>> [r["layer"] for r in rows], list(rows[0]["probe_vs"])
        ([3, 4], ['b'])
    """
    data = layer_data(residuals, domains, position, layers)
    _, counts = np.unique(data.labels, return_counts=True)
    rows = []
    for layer in tqdm(data.layers, desc="separation", disable=not progress, leave=False):
        x = data.at(layer)
        row: dict = {
            "layer": int(layer),
            "silhouette": silhouette(x, data.labels),
            "probe_all": probe_accuracy(x, data.labels, folds, seed),
            "chance_all": float(counts.max() / counts.sum()),
        }
        if target is not None:
            vs = {}
            for d in data.domains:
                if d == target:
                    continue
                keep = (data.labels == target) | (data.labels == d)
                vs[d] = probe_accuracy(x[keep], data.labels[keep], folds, seed)
            row["probe_vs"] = vs
            vals = [v for v in vs.values() if not np.isnan(v)]
            row["probe_vs_mean"] = float(np.mean(vals)) if vals else float("nan")
            row["probe_vs_min"] = float(np.min(vals)) if vals else float("nan")
        rows.append(row)
    return rows


def separation_table(
    residuals: Mapping[str, Residuals],
    targets: Sequence[str],
    domains: Sequence[str] | None = None,
    silhouette_domains: Sequence[str] | None = None,
    rest: Sequence[str] | None = None,
    position: int = -1,
    layers: Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Separation numbers per layer for several target domains at once (one pass over the layers).

    Args:
        residuals: per-domain residuals (e.g. train prompts of every domain).
        targets: domains probed one against the rest (e.g. every harmful domain).
        domains: domains of the multiclass probe (default: all in ``residuals``).
        silhouette_domains: domains of the silhouette (default: ``domains``).
        rest: the "rest" of a target-vs-rest probe, the target itself excluded (default: ``targets``).
        position: the post-instruction position.
        layers: the layers (default: all collected).
        folds: cross-validation setting: the number of folds.
        seed: cross-validation setting: the seed.
        progress: show a progress bar over the layers.

    Returns:
        one dict per layer: ``layer``, ``silhouette`` (cosine, over ``silhouette_domains``), ``probe_all``
        (multiclass CV accuracy over ``domains``), ``chance_all`` (majority share), ``probe_vs_rest``
        ({target: balanced CV accuracy of target vs rest; chance 0.5}), ``probe_vs_rest_min``.

    Raises:
        KeyError: a domain that ``residuals`` does not hold.
        ValueError: a ``position`` or layer that was not collected.

    Examples:
        >>> res = collect_domain_residuals(model, prompts)                               # doctest: +SKIP
        >>> rows = separation_table(res, prompts.harmful_domains, progress=False)        # doctest: +SKIP
        >>> max(rows, key=lambda r: r["probe_vs_rest_min"])["layer"]                     # doctest: +SKIP
        12
    """
    domains = list(domains) if domains is not None else list(residuals)
    sil_domains = list(silhouette_domains) if silhouette_domains is not None else domains
    rest = list(rest) if rest is not None else list(targets)
    data = layer_data(residuals, list(dict.fromkeys([*domains, *sil_domains, *targets, *rest])), position, layers)
    in_all, in_sil = np.isin(data.labels, domains), np.isin(data.labels, sil_domains)
    _, counts = np.unique(data.labels[in_all], return_counts=True)
    rows = []
    for layer in tqdm(data.layers, desc="separation", disable=not progress, leave=False):
        x = data.at(layer)
        vs = {}
        for t in targets:
            keep = (data.labels == t) | (np.isin(data.labels, rest) & (data.labels != t))
            vs[t] = probe_accuracy(x[keep], data.labels[keep] == t, folds, seed, balanced=True)
        vals = [v for v in vs.values() if not np.isnan(v)]
        rows.append(
            {
                "layer": int(layer),
                "silhouette": silhouette(x[in_sil], data.labels[in_sil]),
                "probe_all": probe_accuracy(x[in_all], data.labels[in_all], folds, seed),
                "chance_all": float(counts.max() / counts.sum()),
                "probe_vs_rest": vs,
                "probe_vs_rest_min": float(np.min(vals)) if vals else float("nan"),
            }
        )
    return rows


@dataclass(frozen=True)
class Embedding2D:
    """2-D embeddings of every prompt, per layer.

    Attributes:
        coords: layer -> [n_prompts, 2].
        labels: domain of each prompt.
        position: the post-instruction position.
        method: "tsne" or "pca".
    """

    coords: dict[int, np.ndarray]
    labels: np.ndarray
    position: int
    method: str = "tsne"


def embed_2d(x: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """[n, 2] embedding of standardised features: t-SNE (after PCA to ≤ 50 dims) or PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if n < 3 or float(np.var(x, axis=0).sum()) < 1e-12:  # degenerate (e.g. identical vectors): no layout
        return np.zeros((n, 2), dtype=np.float32)
    k = int(min(50, n - 1, x.shape[1]))
    with single_threaded():
        z = PCA(n_components=k, random_state=seed).fit_transform(x) if k >= 2 else x
        if method == "pca":
            return np.asarray(z[:, :2], dtype=np.float32)
        perp = perplexity if perplexity is not None else float(max(2.0, min(30.0, (n - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, max_iter=500, n_jobs=1)
        return tsne.fit_transform(z).astype(np.float32)


def tsne_layers(
    residuals: Mapping[str, Residuals],
    layers: Sequence[int] | None = None,
    domains: Sequence[str] | None = None,
    position: int = -1,
    method: str = "tsne",
    seed: int = 0,
    progress: bool = True,
) -> Embedding2D:
    """t-SNE (or PCA) of per-prompt residuals at ``position`` for each of ``layers``, labels = domains.

    Features are standardised per layer; t-SNE runs after a PCA to at most 50 dimensions. Fewer than 3
    prompts, or identical vectors, give all-zero coordinates.

    Args:
        residuals: per-domain residuals, each with vectors [n_prompts, n_layers, n_positions, d_model].
        layers: the layers to embed (default: all collected).
        domains: the domains to include (default: all in ``residuals``).
        position: the post-instruction position.
        method: ``"tsne"`` or ``"pca"`` (anything other than ``"pca"`` runs t-SNE).
        seed: the seed of PCA and t-SNE.
        progress: show a progress bar over the layers.

    Returns:
        An ``Embedding2D``: ``coords`` maps each layer to [n_prompts, 2] (float32), ``labels`` holds the
        domain of each prompt.

    Examples:
        >>> res = collect_domain_residuals(model, prompts, limit=20)          # doctest: +SKIP
        >>> emb = tsne_layers(res, layers=[4, 12, 20])                        # doctest: +SKIP
        >>> emb.coords[12].shape                                              # doctest: +SKIP
        (180, 2)
    """
    data = layer_data(residuals, domains, position, layers)
    coords = {}
    for layer in tqdm(data.layers, desc=method, disable=not progress, leave=False):
        coords[int(layer)] = embed_2d(data.at(layer), method, seed)
    return Embedding2D(coords, data.labels, position, method)
