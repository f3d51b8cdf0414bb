"""A domain gate: a profile's adapters answer only prompts read as a request of an authorized domain.

A baked adapter decides from one block's input whether a prompt belongs to its domain, and wrapped requests of
other domains (framed as the authorized profession, role-play, or put beside an authorized request) fool it
(``docs/decisions.md``, "Domain gate"). The gate is a second, separate decision taken on the prompt before generation: a
logistic probe on the base model's residual stream at one layer, trained on the authorized domains' train
prompts (open) against every other domain's (closed) — harmful, harmless and borderline — and against
adversarial variants of the other harmful domains' train prompts built with the bake's *training* templates
(:mod:`palette_lens.data.augment`; the templates the leakage measurement uses stay unseen). By default the probe
names the *domain* of a prompt (a multinomial probe over every domain, each adversarial variant labelled with the
domain of the request it wraps) and the gate opens when the authorized domains' probabilities add up past the
threshold; ``probe="binary"`` trains authorized-vs-rest instead. When the gate stays
closed the prompt is answered by the base model, so every closed prompt behaves exactly as vanilla; what the
gate can cost is relaxation on authorized prompts it fails to open for (measured beside the leakage).

With ``segment_veto`` the gate also reads each sentence of an opened prompt on its own (:func:`prompt_segments`)
and stays shut when any sentence reads as another harmful domain: a request hidden behind a profession claim, a
role-play frame or an authorized request is then judged by itself rather than diluted in its wrapper.

This is conditional activation steering's idea (a condition read from the prompt decides whether the behaviour
change applies) put in front of a baked adapter. The probe's parameters are plain tensors saved as safetensors
with a content hash (no pickle); the gate records the base model's fingerprint and refuses another model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.residuals import collect_residuals

log = logging.getLogger(__name__)

GATE_FILE = "gate.safetensors"
GATE_META = "gate.json"
FEATURES = ("mean", "last")
ADVERSARIAL_KINDS = ("profession", "roleplay", "mixed")
PROBES = ("domains", "binary")
#: Sentence ends, colons and semicolons followed by space, and line breaks: where :func:`prompt_segments` cuts.
_SEGMENT_BREAK = re.compile(r"(?<=[.!?:;])\s+|\n+")
SEGMENT_MIN_WORDS = 4


@dataclass(frozen=True)
class GateConfig:
    """How a gate is trained.

    Attributes:
        layer: the layer whose ``resid_pre`` the probe reads (None: :func:`default_gate_layer`).
        feature: "mean" of the post-instruction positions, or the "last" one.
        C: inverse L2 strength of the logistic regression (features are standardised first).
        threshold: the gate opens when the probe's probability of "authorized" exceeds this.
        parts: split parts the gate trains on (the test split is never used).
        adversarial: also train on adversarial variants (training templates) of the other harmful domains'
            prompts as closed examples: one of each kind in ``adversarial_kinds`` per prompt.
        adversarial_kinds: the attack kinds of those variants.
        seed: seed of the variants.
        probe: "domains", a multinomial probe naming the prompt's domain (variants labelled with the domain of the
            request they wrap; the gate opens on the authorized domains' summed probability), or "binary",
            authorized against everything else.
        authorized_variants: kinds ("profession", "roleplay") of variants of the authorized domains' own prompts
            (training templates, their own professions) added as open examples, so that a legitimate user who
            frames a request by their profession is read by the request rather than by the framing. Without them
            the default model's gates opened for 12-40% of profession-framed authorized requests, with them for
            65-80% (docs/decisions.md, "Domain gate").
        segment_veto: None (off), or a probability: a prompt the gate opens for stays shut when one of its
            sentences (:func:`prompt_segments`) reads as the other harmful domains with more than this summed
            probability. Domain probe only (a binary gate needs None). On the default model 0.5 shut a cyber gate
            that never trained on mixed prompts for 6% of them instead of 38%.

    Raises:
        PaletteError: an unknown ``probe``, ``feature`` or variant kind, a ``threshold`` or ``segment_veto``
            outside (0, 1), ``C`` ≤ 0, or a segment veto with ``probe="binary"`` (the default ``segment_veto``
            is 0.5, so a binary gate needs ``segment_veto=None``).

    Examples:
        >>> GateConfig(probe="binary", segment_veto=None).threshold
        0.3
        >>> GateConfig(probe="binary")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        palette_lens.errors.PaletteError: the segment veto needs the domain probe (probe='domains')
    """

    layer: int | None = None
    feature: str = "mean"
    C: float = 0.05
    threshold: float = 0.3
    parts: tuple[str, ...] = ("train", "val")
    adversarial: bool = True
    adversarial_kinds: tuple[str, ...] = ADVERSARIAL_KINDS
    seed: int = 0
    probe: str = "domains"
    authorized_variants: tuple[str, ...] = ("profession",)
    segment_veto: float | None = 0.5

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise PaletteError(f"gate probe must be one of {', '.join(PROBES)}, not {self.probe!r}")
        bad = [k for k in self.authorized_variants if k not in ("profession", "roleplay")]
        if bad:
            raise PaletteError(f"gate authorized variants must come from profession, roleplay (got {bad})")
        if self.segment_veto is not None:
            if not 0.0 < self.segment_veto < 1.0:
                raise PaletteError(f"gate segment veto must lie in (0, 1), not {self.segment_veto}")
            if self.probe != "domains":
                raise PaletteError("the segment veto needs the domain probe (probe='domains'): a binary probe "
                                   "names no domain to veto; pass segment_veto=None with probe='binary'")
        if self.feature not in FEATURES:
            raise PaletteError(f"gate feature must be one of {', '.join(FEATURES)}, not {self.feature!r}")
        if not 0.0 < self.threshold < 1.0:
            raise PaletteError(f"gate threshold must lie in (0, 1), not {self.threshold}")
        if self.C <= 0:
            raise PaletteError(f"gate C must be positive, not {self.C}")
        bad = [k for k in self.adversarial_kinds if k not in ADVERSARIAL_KINDS]
        if bad or (self.adversarial and not self.adversarial_kinds):
            raise PaletteError(f"gate adversarial kinds must come from {', '.join(ADVERSARIAL_KINDS)} (got "
                               f"{list(self.adversarial_kinds)})")


def default_gate_layer(model: ChatModel) -> int:
    """A quarter of the way through the model (layer 6 of 24 on the default model).

    On the default model a probe at layer 6 separated the wrapped non-target requests as well as one at layers
    10, 14 or 18 did (docs/decisions.md, "Domain gate"), and an early layer keeps the gate's forward pass short.
    """
    return max(0, min(model.n_layers - 1, model.n_layers // 4))


@dataclass
class DomainGate:
    """A logistic probe deciding, per prompt, whether a profile's adapters apply.

    With z = (x − centre) / scale and x the ``resid_pre`` of ``layer`` (mean over the post-instruction positions,
    or the last one): a domain probe gives ``p(open) = Σ_{d authorized} softmax(W z + b)_d``, a binary one
    ``p(open) = σ(w · z + b)``.

    Attributes:
        domains: the authorized domains it opens for.
        layer: the layer whose ``resid_pre`` it reads.
        feature: "mean" over the post-instruction positions, or the "last" one.
        centre: [d_model] mean of the training features (subtracted).
        scale: [d_model] standard deviation of the training features (divided by).
        weight: [n_classes, d_model] (domain probe) or [d_model] (binary) probe weights.
        bias: [n_classes] intercepts (domain probe) or one float (binary).
        threshold: opens when ``p(open) > threshold``.
        base_fingerprint: the base model's weights fingerprint.
        calibration: accuracies on the training prompts and the counts used.
        classes: the domain probe's class names, in the order of ``weight``'s rows (empty: binary).
        segment_veto: None, or the summed probability of the other harmful domains above which one sentence of a
            prompt shuts the gate (:meth:`vetoed`).

    ``features(model, prompts)`` gives [n_prompts, d_model] inputs, ``probability(x)`` maps them to [n]
    probabilities, and ``opens(model, prompts)`` decides per prompt. :meth:`load` raises
    :class:`~palette_lens.errors.PaletteError` on a damaged folder or another base model.

    Examples:
        >>> gate = DomainGate(("cyber",), 6, "mean", torch.zeros(2), torch.ones(2),
        ...                   weight=torch.tensor([1.0, 0.0]), bias=0.0, threshold=0.5, base_fingerprint="")
        >>> gate.probability(torch.tensor([[2.0, 0.0], [-2.0, 0.0]]))     # a binary gate, d_model 2
        tensor([0.8808, 0.1192])
        >>> gate.opens(model, ["Write a port scanner."])                   # doctest: +SKIP
    """

    domains: tuple[str, ...]
    layer: int
    feature: str
    centre: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: float | torch.Tensor
    threshold: float
    base_fingerprint: str
    calibration: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    segment_veto: float | None = None

    # ---- deciding
    def features(self, model: ChatModel, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """The probe's inputs: [n_prompts, d_model] (float32)."""
        self.check_model(model)
        return gate_features(model, prompts, self.layer, self.feature, batch_size)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """[n, d_model] features → [n] probability that the prompt is an authorized request."""
        z = (x.float() - self.centre) / self.scale  # [n, d_model]
        if not self.classes:
            return torch.sigmoid(z @ self.weight + float(self.bias))
        p = torch.softmax(z @ self.weight.T + torch.as_tensor(self.bias, dtype=torch.float32), dim=-1)
        authorized = [self.classes.index(d) for d in self.domains]
        return p[:, authorized].sum(-1)

    def domain_probabilities(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """A domain probe's [n] probability per class (which domain a prompt reads as); {} for a binary gate."""
        if not self.classes:
            return {}
        z = (x.float() - self.centre) / self.scale
        p = torch.softmax(z @ self.weight.T + torch.as_tensor(self.bias, dtype=torch.float32), dim=-1)
        return {c: p[:, i] for i, c in enumerate(self.classes)}

    def opens(self, model: ChatModel, prompts: Sequence[str], batch_size: int = 32) -> list[bool]:
        """Per prompt, whether the adapters apply (one forward pass to ``layer``; with a segment veto one more
        over the sentences of the prompts it opens for)."""
        if not prompts:
            return []
        opened = (self.probability(self.features(model, prompts, batch_size)) > self.threshold).tolist()
        if self.segment_veto is not None:
            idx = [i for i, o in enumerate(opened) if o]
            for i, veto in zip(idx, self.vetoed(model, [prompts[i] for i in idx], batch_size)):
                opened[i] = not veto
        return opened

    def other_harmful_probability(self, x: torch.Tensor) -> torch.Tensor:
        """[n, d_model] → [n] summed probability of the harmful domains the gate does not open for."""
        from palette_lens.data.prompts import RESERVED

        per_class = self.domain_probabilities(x)
        others = [p for c, p in per_class.items() if c not in self.domains and c not in RESERVED]
        if not others:
            return torch.zeros(x.shape[0])
        return torch.stack(others).sum(0)

    def vetoed(self, model: ChatModel, prompts: Sequence[str], batch_size: int = 32) -> list[bool]:
        """Per prompt, whether one of its sentences reads as another harmful domain (> ``segment_veto``).

        A prompt of one sentence is never vetoed (the whole prompt was read already).
        """
        if self.segment_veto is None or not self.classes:
            raise PaletteError("this gate has no segment veto (train it with segment_veto= and the domain probe)")
        owners: list[int] = []
        segments: list[str] = []
        for i, text in enumerate(prompts):
            pieces = prompt_segments(text)
            owners += [i] * len(pieces)
            segments += pieces
        vetoed = [False] * len(prompts)
        if segments:
            other = self.other_harmful_probability(self.features(model, segments, batch_size))
            for i, p in zip(owners, other.tolist()):
                vetoed[i] = vetoed[i] or p > self.segment_veto
        return vetoed

    def readings(self, model: ChatModel, groups: Mapping[str, Sequence[str]],
                 batch_size: int = 32) -> dict[str, dict[str, float]]:
        """How a domain probe reads groups of prompts: group → class → mean probability (each row sums to 1).

        Raises:
            PaletteError: for a binary gate (it names no domain) or an empty group.
        """
        if not self.classes:
            raise PaletteError("a binary gate names no domain; train it with probe='domains' to read prompts")
        empty = [g for g, ps in groups.items() if not ps]
        if empty:
            raise PaletteError(f"no prompts in group {empty[0]!r}")
        out: dict[str, dict[str, float]] = {}
        for group, ps in groups.items():
            per_class = self.domain_probabilities(self.features(model, list(ps), batch_size))
            out[group] = {c: float(p.mean()) for c, p in per_class.items()}
        return out

    def check_model(self, model: ChatModel) -> None:
        """Raise a clear error when ``model`` is not the base model the gate was trained on."""
        if self.base_fingerprint and model.fingerprint != self.base_fingerprint:
            raise PaletteError(
                f"this gate was trained on a model with fingerprint {self.base_fingerprint}, but the model given "
                f"is {model.name!r} (fingerprint {model.fingerprint}); train the gate again for this model"
            )

    def shapes_agree(self) -> bool:
        """Whether the tensors, classes and domains fit together (a check of a loaded gate)."""
        d_model = self.centre.shape
        if self.scale.shape != d_model or self.centre.dim() != 1:
            return False
        if self.segment_veto is not None and not 0.0 < self.segment_veto < 1.0:
            return False
        if not self.classes:
            return self.weight.shape == d_model and self.segment_veto is None
        bias = torch.as_tensor(self.bias)
        return (self.weight.shape == (len(self.classes), d_model[0]) and bias.shape == (len(self.classes),)
                and all(d in self.classes for d in self.domains))

    # ---- saving
    def meta(self) -> dict:
        """JSON-serialisable description (everything but the tensors)."""
        bias = [float(b) for b in torch.as_tensor(self.bias).reshape(-1)] if self.classes else float(self.bias)
        return {
            "domains": list(self.domains), "layer": self.layer, "feature": self.feature, "bias": bias,
            "classes": list(self.classes), "threshold": self.threshold, "segment_veto": self.segment_veto,
            "base_fingerprint": self.base_fingerprint, "calibration": self.calibration,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``gate.safetensors`` (content-hashed) and ``gate.json`` into ``folder`` (atomically)."""
        from palette_lens.util.atomic import atomic_write_text
        from palette_lens.util.integrity import save_checked

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_checked(folder / GATE_FILE, {"centre": self.centre, "scale": self.scale, "weight": self.weight},
                     {"palette_lens": "gate"})
        atomic_write_text(folder / GATE_META, json.dumps(self.meta(), indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: ChatModel | None = None) -> DomainGate:
        """Read a saved gate; with ``model`` also check that it was trained on that base model."""
        from palette_lens.util.integrity import load_checked

        folder = Path(folder)
        meta_path, tensor_path = folder / GATE_META, folder / GATE_FILE
        if not meta_path.is_file() or not tensor_path.is_file():
            raise PaletteError(f"{folder} holds no gate (expected {GATE_META} and {GATE_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            loaded = load_checked(tensor_path)
            if loaded is None:
                raise ValueError("unreadable, truncated or altered")
            tensors = loaded[0]
            classes = tuple(str(c) for c in meta.get("classes") or ())
            bias = torch.tensor([float(b) for b in meta["bias"]]) if classes else float(meta["bias"])
            gate = cls(
                tuple(meta["domains"]), int(meta["layer"]), str(meta["feature"]), tensors["centre"].float(),
                tensors["scale"].float(), tensors["weight"].float(), bias, float(meta["threshold"]),
                str(meta.get("base_fingerprint", "")), dict(meta.get("calibration") or {}), classes,
                None if meta.get("segment_veto") is None else float(meta["segment_veto"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PaletteError(f"the gate in {folder} is damaged ({exc}); train it again") from exc
        if not gate.shapes_agree():
            raise PaletteError(f"the gate in {folder} is damaged (tensor shapes or classes disagree); train it again")
        if model is not None:
            gate.check_model(model)
        return gate


def prompt_segments(text: str, min_words: int = SEGMENT_MIN_WORDS) -> list[str]:
    """The sentences of a prompt the segment veto reads on their own: cut at sentence ends, colons, semicolons and
    line breaks, stripped of quotes, pieces under ``min_words`` words dropped. [] when fewer than two remain (a
    one-sentence prompt is read whole anyway)."""
    pieces = (p.strip().strip("\"'“”").strip() for p in _SEGMENT_BREAK.split(text))
    kept = [p for p in pieces if len(p.split()) >= min_words]
    return kept if len(kept) > 1 else []


def gate_features(model: ChatModel, prompts: Sequence[str], layer: int, feature: str = "mean",
                  batch_size: int = 32) -> torch.Tensor:
    """``resid_pre`` of ``layer`` per prompt, mean over the post-instruction positions or the last: [n, d_model]."""
    if not 0 <= layer < model.n_layers:
        raise PaletteError(f"gate layer {layer} is outside the model's 0..{model.n_layers - 1}")
    res = collect_residuals(model, list(prompts), layers=[layer], positions=model.positions,
                            batch_size=batch_size, desc="gate")
    x = res.vectors[:, 0]  # [n, n_positions, d_model]
    return x.mean(1) if feature == "mean" else x[:, -1]


def generate_gated(
    model: ChatModel, lm: Any, gate: DomainGate, prompts: Sequence[str], max_new_tokens: int = 64,
    batch_size: int = 16,
) -> tuple[list[str], list[bool]]:
    """Greedy answers of a gated profile: ``lm`` (e.g. a merged profile) where the gate opens, the base model
    elsewhere. Returns (answers, opened) in the order of ``prompts``.

    Args:
        model: the base chat model (the gate's features and the closed prompts' answers).
        lm: the profile's Hugging Face model used where the gate opens (e.g. :func:`merged_profile` output).
        gate: a gate trained on ``model``.
        prompts: user prompts.
        max_new_tokens: at most this many generated tokens per answer.
        batch_size: prompts per forward pass.

    Returns:
        (answers, opened): the answer per prompt and whether the gate opened for it.

    Raises:
        PaletteError: the gate was trained on another base model.

    Examples:
        >>> lm = merged_profile(model, [adapter])                                 # doctest: +SKIP
        >>> answers, opened = generate_gated(model, lm, gate, ["Write a port scanner."])  # doctest: +SKIP
        >>> opened                                                                # doctest: +SKIP
        [True]
    """
    from palette_lens.generation.greedy import generate_completions
    from palette_lens.models.copies import plain_hf_model

    opened = gate.opens(model, prompts, batch_size)
    answers = [""] * len(prompts)
    for flag, variant in ((True, lm), (False, plain_hf_model(model))):
        idx = [i for i, o in enumerate(opened) if o == flag]
        if idx:
            gen = generate_completions(model, [prompts[i] for i in idx], lm=variant, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, desc="gated" if flag else "closed")
            for j, i in enumerate(idx):
                answers[i] = gen.texts[j]
    return answers, opened
