"""Training a domain gate: its open and closed example prompts and the logistic probe (:func:`fit_gate`).

The gate itself (deciding, the segment veto, saving) is :mod:`palette_lens.gate.domain_gate`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import torch

from palette_lens.data.prompt_set import PromptSet
from palette_lens.errors import PaletteError
from palette_lens.gate.config import GateConfig, default_gate_layer
from palette_lens.gate.domain_gate import DomainGate
from palette_lens.gate.features import GateFeatureCache, gate_features
from palette_lens.models.chat_model import ChatModel

log = logging.getLogger(__name__)


def gate_training_prompts(
    prompts: PromptSet, domains: Sequence[str], config: GateConfig | None = None
) -> tuple[list[str], list[int]]:
    """The gate's training prompts and labels (1: open, an authorized request; 0: closed).

    Open: the authorized domains' prompts of ``config.parts`` (the ``"gate"`` part: the domain's gate pool).
    Closed: every other domain's (harmful, harmless, borderline), and with ``config.adversarial`` one adversarial variant (training templates) of each kind in
    ``config.adversarial_kinds`` of every other harmful domain's prompt. :func:`gate_training_examples` gives
    the same prompts with their domain names.
    """
    config = config or GateConfig()
    texts, names = gate_training_examples(prompts, domains, config)
    return texts, [int(n in domains) for n in names]


def gate_training_examples(
    prompts: PromptSet, domains: Sequence[str], config: GateConfig | None = None
) -> tuple[list[str], list[str]]:
    """The gate's training prompts and the domain each belongs to (a variant: the domain of the request it wraps).

    With ``config.authorized_variants`` the authorized domains' prompts also come framed (training templates, their
    own professions), named after their domain, i.e. open.

    One variant of every kind per prompt rather than one per prompt with the kind rotating: on the default model
    the cyber gate then opened for 1 of 80 held-out mixed prompts instead of 6 of 80, at the same share of
    authorized requests (docs/decisions.md, "Domain gate").
    """
    config = config or GateConfig()
    from palette_lens.data.augment import adversarial_negatives, target_variants

    domains = tuple(domains)
    if not domains:
        raise PaletteError("a gate needs at least one authorized domain")
    for d in domains:
        prompts.check_domain(d)
        if d not in prompts.harmful_domains:
            raise PaletteError(f"a gate opens for harmful domains, not {d!r}")
    texts: list[str] = []
    names: list[str] = []
    for part in config.parts:
        for d in prompts.domains:
            ps = prompts.part(d, part)
            texts += ps
            names += [d] * len(ps)
        if part == "gate":  # the pool adds plain requests; the variants come from the split's prompts
            continue
        if config.adversarial:
            for kind in config.adversarial_kinds:
                made = adversarial_negatives(prompts, domains, kinds=(kind,), seed=config.seed, split=part)
                for d, variants in made.items():
                    texts += variants
                    names += [d] * len(variants)
        if config.authorized_variants:
            made = target_variants(prompts, domains, config.authorized_variants, seed=config.seed, split=part)
            for d, variants in made.items():
                texts += variants
                names += [d] * len(variants)
    opened = [n in domains for n in names]
    if not any(opened) or all(opened):
        raise PaletteError("a gate needs both authorized and other prompts to train on")
    return texts, names


def fit_gate(
    model: ChatModel, prompts: PromptSet, domains: Sequence[str], config: GateConfig | None = None,
    batch_size: int = 32, feature_cache: GateFeatureCache | None = None,
) -> DomainGate:
    """Train a :class:`DomainGate` for ``domains`` on the prompt set's train (and validation) prompts.

    Features are the ``resid_pre`` of the gate's layer (:func:`gate_features`, [n_prompts, d_model]),
    standardised, fed to a class-balanced L2 logistic regression; the training true/false-open rates are
    kept in ``gate.calibration``.

    Args:
        model: the base chat model (never modified).
        prompts: the prompt set; ``config.parts`` of every domain are used (never the test split by default).
        domains: the authorized (harmful) domains the gate opens for.
        config: gate settings (default: :class:`GateConfig`'s).
        batch_size: prompts per forward pass.
        feature_cache: a :class:`~palette_lens.gate.features.GateFeatureCache` shared by the gates of one run,
            so that prompts another gate already read are not read again (the same gate either way).

    Returns:
        The trained :class:`DomainGate` (a domain probe unless ``config.probe == "binary"``).

    Raises:
        UnknownDomainError: a domain that ``prompts`` does not contain.
        PaletteError: no domain, a reserved domain (``harmless`` / ``borderline``), no prompts on one of
            the two sides, or a ``config.layer`` outside the model.

    Examples:
        >>> gate = fit_gate(model, prompts, ["cyber"])                        # doctest: +SKIP
        >>> gate.calibration["tpr"], gate.calibration["tnr"]                   # doctest: +SKIP
        (0.97, 0.99)
        >>> gate.save("runs/demo/gates/cyber")                                # doctest: +SKIP
    """
    config = config or GateConfig()
    texts, names = gate_training_examples(prompts, domains, config)
    layer = default_gate_layer(model) if config.layer is None else config.layer
    x = gate_features(model, texts, layer, config.feature, batch_size, feature_cache)  # [n, d_model]
    return fit_gate_on_features(x, names, domains, config, layer, model.fingerprint)


def fit_gate_on_features(
    x: torch.Tensor, names: Sequence[str], domains: Sequence[str], config: GateConfig, layer: int,
    base_fingerprint: str = "",
) -> DomainGate:
    """The probe of :func:`fit_gate` on features already read: [n, d_model] ``x`` and each row's domain name.

    For studies that train many gates on the same prompts (cross-validation, settings compared side by side)
    without reading the model again; :func:`fit_gate` is this after :func:`gate_training_examples` and
    :func:`~palette_lens.gate.features.gate_features`.

    Args:
        x: [n, d_model] the gate layer's features of the training prompts (float32).
        names: n domain names (a variant: the domain of the request it wraps).
        domains: the authorized domains (rows named after them are open examples).
        config: gate settings (``probe``, ``C``, ``threshold``, ``segment_veto`` and ``feature`` are used).
        layer: the layer ``x`` was read at (recorded in the gate).
        base_fingerprint: the base model's fingerprint (recorded; "" for a study that never saves the gate).

    Returns:
        The trained :class:`DomainGate`, with training true/false-open rates in ``calibration``.

    Raises:
        PaletteError: ``x`` and ``names`` differ in length, or no row on one of the two sides.

    Examples:
        >>> x = torch.randn(6, 4)
        >>> gate = fit_gate_on_features(x, ["cyber"] * 3 + ["bio"] * 3, ["cyber"], GateConfig(), layer=6)
        >>> gate.classes
        ('bio', 'cyber')
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    domains = tuple(domains)
    if x.shape[0] != len(names):
        raise PaletteError(f"{x.shape[0]} feature rows for {len(names)} names")
    y = np.asarray([int(n in domains) for n in names])
    if y.all() or not y.any():
        raise PaletteError("a gate needs both authorized and other prompts to train on")
    x = x.float()
    centre = x.mean(0)
    scale = x.std(0).clamp_min(1e-6)
    z = ((x - centre) / scale).numpy().astype(np.float64)
    clf = LogisticRegression(C=config.C, class_weight="balanced", max_iter=5000)
    if config.probe == "binary":
        clf.fit(z, y)
        gate = DomainGate(
            domains, layer, config.feature, centre, scale, torch.tensor(clf.coef_[0], dtype=torch.float32),
            float(clf.intercept_[0]), config.threshold, base_fingerprint,
        )
    else:
        clf.fit(z, np.asarray(names))
        coef, intercept = clf.coef_, clf.intercept_
        if len(clf.classes_) == 2:  # sklearn fits one row for two classes: softmax([-a/2, a/2]) = σ(a)
            coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
        weight = torch.tensor(np.ascontiguousarray(coef), dtype=torch.float32)  # [n_classes, d_model]
        gate = DomainGate(
            domains, layer, config.feature, centre, scale, weight,
            torch.tensor(intercept, dtype=torch.float32), config.threshold, base_fingerprint,
            classes=tuple(str(c) for c in clf.classes_), segment_veto=config.segment_veto,
        )
    opened = (gate.probability(x) > config.threshold).numpy()
    pos, neg = y == 1, y == 0
    gate.calibration = {
        "tpr": float(opened[pos].mean()), "tnr": float((~opened[neg]).mean()),
        "n_open": int(pos.sum()), "n_closed": int(neg.sum()), "config": asdict(config) | {"layer": layer},
    }
    log.info("%s gate for %s at layer %d (%s): train tpr %.2f, tnr %.2f on %d / %d prompts", config.probe,
             "+".join(domains), layer, config.feature, gate.calibration["tpr"], gate.calibration["tnr"], int(pos.sum()), int(neg.sum()))
    return gate
