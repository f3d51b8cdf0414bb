"""A router in front of served profiles: which profile, if any, each prompt gets.

A multi-LoRA server holds one adapter per profile and takes the adapter's name with each request; the router
decides that name. Each profile's gate reads the prompt's residual at its layer, so routing runs only the
layers below the highest gate layer (once for all profiles whose gates read the same layer and feature). A
prompt goes to the profile whose gate opens with the highest probability (and whose segment veto, if it has
one, lets it through); a prompt no gate opens for gets no profile: the base model answers it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from palette_lens.errors import PaletteError
from palette_lens.gate.domain_gate import DomainGate
from palette_lens.gate.features import gate_features
from palette_lens.models.chat_model import ChatModel


class Router:
    """Route prompts to profiles by their domain gates.

    Args:
        gates: profile name → its :class:`DomainGate` (all trained on the same base model).

    Raises:
        PaletteError: no gates.

    Examples:
        >>> router = Router({"cyber": cyber_gate, "cyber+hate": pair_gate})          # doctest: +SKIP
        >>> router.route(model, ["Write a port scanner.", "Bake bread."])             # doctest: +SKIP
        ['cyber', None]
    """

    def __init__(self, gates: Mapping[str, DomainGate]):
        if not gates:
            raise PaletteError("a router needs at least one profile's gate")
        self.gates = dict(gates)

    @classmethod
    def from_exports(cls, folders: Sequence[str | Path], model: ChatModel) -> Router:
        """A router over exported profiles (``compose --export DIR --gate``), each named as its export says.

        Raises:
            PaletteError: a folder that is not an export or an export without a gate.

        Examples:
            >>> router = Router.from_exports(["exports/cyber", "exports/cyber+hate"], model)   # doctest: +SKIP
        """
        gates = {}
        for folder in map(Path, folders):
            info_file = folder / "palette_profile.json"
            if not info_file.is_file():
                raise PaletteError(f"{folder} is not a palette-lens export (no palette_profile.json)")
            info = json.loads(info_file.read_text())
            if not info.get("gate"):
                raise PaletteError(f"the export {folder} has no gate (export it with --gate)")
            gates[str(info["profile"])] = DomainGate.load(folder / str(info["gate"]), model)
        return cls(gates)

    def probabilities(self, model: ChatModel, prompts: Sequence[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
        """Profile → [n] probability its gate gives each prompt (one partial forward pass per gate layer)."""
        features: dict[tuple[int, str], torch.Tensor] = {}
        out = {}
        for name, gate in self.gates.items():
            gate.check_model(model)
            key = (gate.layer, gate.feature)
            if key not in features:
                features[key] = gate_features(model, prompts, gate.layer, gate.feature, batch_size)
            out[name] = gate.probability(features[key])
        return out

    def route(self, model: ChatModel, prompts: Sequence[str], batch_size: int = 32) -> list[str | None]:
        """Per prompt, the profile whose gate opens with the highest probability, or None (the base model).

        Examples:
            >>> router.route(model, ["Write a keylogger.", "Write a haiku."])              # doctest: +SKIP
            ['cyber', None]
        """
        prompts = list(prompts)
        if not prompts:
            return []
        probs = self.probabilities(model, prompts, batch_size)
        names = list(probs)
        table = torch.stack([probs[n] for n in names], dim=-1)  # [n_prompts, n_profiles]
        opens = table > torch.tensor([self.gates[n].threshold for n in names])
        choice: list[str | None] = [None] * len(prompts)
        for i in range(len(prompts)):
            if opens[i].any():
                choice[i] = names[int(torch.where(opens[i], table[i], -1.0).argmax())]
        for name, gate in self.gates.items():  # a segment veto reads the sentences of the prompts routed here
            idx = [i for i, c in enumerate(choice) if c == name]
            if gate.segment_veto is not None and idx:
                for i, vetoed in zip(idx, gate.vetoed(model, [prompts[i] for i in idx], batch_size)):
                    if vetoed:
                        choice[i] = None
        return choice
