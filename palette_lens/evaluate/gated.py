"""A profile evaluated behind its domain gate: the gate is trained, then decides per prompt who answers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from palette_lens.data.prompts import PromptSet
from palette_lens.evaluate.evaluator import Evaluator
from palette_lens.evaluate.results import VariantResult
from palette_lens.gate.config import GateConfig
from palette_lens.gate.domain_gate import DomainGate
from palette_lens.gate.training import fit_gate
from palette_lens.models.chat_model import ChatModel


def evaluate_gated(
    evaluator: Evaluator, model: ChatModel, prompts: PromptSet, name: str, domains: Sequence[str], lm: Any,
    config: GateConfig = GateConfig(), folder: str | Path | None = None,
) -> tuple[DomainGate, VariantResult]:
    """Train the gate of a profile and evaluate the gated profile on the evaluator's prompts.

    ``lm`` (e.g. the merged profile) answers the prompts the gate opens for, vanilla the rest (see
    :meth:`palette_lens.evaluate.evaluator.Evaluator.evaluate_lm`). With ``folder`` the gate is saved there.
    Returns (the gate, the :class:`palette_lens.evaluate.results.VariantResult` named ``name``).

    Args:
        evaluator: the evaluator whose prompts (and vanilla completions) are used.
        model: the base chat model (the gate is trained on it).
        prompts: the prompt set the gate trains on (train and validation parts by default).
        name: the variant's name (e.g. ``"cyber+hate gated"``).
        domains: the profile's authorized domains.
        lm: the profile's HF model answering the prompts the gate opens for.
        config: gate settings.
        folder: where to save the gate (None: not saved).

    Returns:
        (gate, result): the trained :class:`DomainGate` and the gated variant's result (``kind="gated"``,
        the gate's description in ``result.extra["gate"]``).

    Raises:
        UnknownDomainError: a domain that ``prompts`` does not contain.
        PaletteError: the gate cannot be trained (see :func:`palette_lens.gate.training.fit_gate`).

    Examples:
        >>> lm = merged_profile(model, [adapter])                                        # doctest: +SKIP
        >>> gate, result = evaluate_gated(evaluator, model, prompts, "gated", ["cyber"], lm)  # doctest: +SKIP
        >>> result.extra["gate_opened"]                                                  # doctest: +SKIP
    """
    gate = fit_gate(model, prompts, domains, config)
    if folder is not None:
        gate.save(folder)
    opens = gate.opens(model, evaluator.evalset.flat()[0])
    result = evaluator.evaluate_lm(name, lm, tuple(domains), kind="gated", opens=opens)
    result.extra["gate"] = gate.meta()
    return gate, result
