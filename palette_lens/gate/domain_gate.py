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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from palette_lens.errors import PaletteError
from palette_lens.gate.features import gate_features, prompt_segments
from palette_lens.models.chat_model import ChatModel

log = logging.getLogger(__name__)

GATE_FILE = "gate.safetensors"
GATE_META = "gate.json"


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
        from palette_lens.data.records import RESERVED

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
