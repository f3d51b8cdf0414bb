"""The settings of a domain gate (:class:`GateConfig`) and its default layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from palette_lens.errors import PaletteError

if TYPE_CHECKING:  # the settings need no torch
    from palette_lens.models.chat_model import ChatModel

FEATURES = ("mean", "last")


ADVERSARIAL_KINDS = ("profession", "roleplay", "mixed")


PROBES = ("domains", "binary")


GATE_PARTS = ("train", "val", "gate")  # never "test"


@dataclass(frozen=True)
class GateConfig:
    """How a gate is trained.

    Attributes:
        layer: the layer whose ``resid_pre`` the probe reads (None: :func:`default_gate_layer`).
        feature: "mean" of the post-instruction positions, or the "last" one.
        C: inverse L2 strength of the logistic regression (features are standardised first).
        threshold: the gate opens when the probe's probability of "authorized" exceeds this.
        parts: split parts the gate trains on, from "train", "val" and "gate" (the domain's gate pool: extra
            requests kept for gates, ``data/gate/``; plain requests only, no variants are built from them). The
            test split is never used. With the pool the default model's cyber gate opened for 95% of the
            held-out cyber requests instead of 85% (docs/decisions.md, "Domain gate").
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
        PaletteError: an unknown ``probe``, ``feature``, part or variant kind, a ``threshold`` or ``segment_veto``
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
    parts: tuple[str, ...] = ("train", "val", "gate")
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
        bad = [p for p in self.parts if p not in GATE_PARTS]
        if bad or not self.parts:
            raise PaletteError(f"gate parts must come from {', '.join(GATE_PARTS)} (got {list(self.parts)})")
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
