"""One model that gates itself: the base weights, each domain's LoRA unmerged, scaled per sequence by the gate.

The domain gate reads the residual stream at an early layer (e.g. 6) and every adapter sits at a later block
(17 or 18 on the default model), so within one forward pass the decision is known before any adapted block
runs. :class:`GatedProfile` builds that model: a plain copy of the base model that shares its weights (no
second copy in memory), with every adapted linear module wrapped so that its LoRA output is multiplied by a
per-sequence, per-domain scale, and a hook on the gate's layer that sets those scales during the prefill:

- **routed** (the default): a prompt the gate opens for gets the delta of the one domain the gate's domain probe
  reads it as (among the profile's), at full weight; composing domains then costs no interference, because a
  cyber prompt meets the cyber delta only;
- **merged**: a prompt the gate opens for gets every domain's delta, at the composition weight (what a merged
  ``W + w·ΣΔW`` profile gives), the others none.

Decoding steps keep the scales of their sequence. Closed prompts run exactly the base model (their LoRA terms
are multiplied by zero). The gate reads the positions that end the *prompt* (the last chat-template
post-instruction tokens of each sequence), so a forward pass over a prompt followed by part of its reply (a
generation continued in a second phase, a reply checked by teacher forcing) decides as the prompt's prefill
did. With a segment veto, :meth:`GatedProfile.generate` first reads the sentences of the prompts (up to the gate
layer only) and the prefill keeps the vetoed prompts shut. :meth:`GatedProfile.decide` gives the decisions for
a list of prompts, running only the layers below the gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from palette_lens.errors import PaletteError
from palette_lens.gate.domain_gate import DomainGate
from palette_lens.models.blocks import module_device
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.copies import plain_hf_model

if TYPE_CHECKING:
    from palette_lens.adapters.baked import BakedAdapter

log = logging.getLogger(__name__)

Routing = Literal["routed", "merged"]


@dataclass
class GateDecision:
    """What the gate decided at the last prefill, per sequence of the batch.

    Attributes:
        opened: [batch] bool, the gate opened (and no segment veto closed it).
        scale: [batch, n_domains] float32, the weight of each domain's delta (0 where closed).
        probability: [batch] float32, the gate's probability of an authorized request.
    """

    opened: torch.Tensor
    scale: torch.Tensor
    probability: torch.Tensor


@dataclass
class _State:
    """Shared by the gate hook and the gated modules of one :class:`GatedProfile`."""

    scale: torch.Tensor | None = None  # [batch, n_domains] float32
    mask: torch.Tensor | None = None  # [batch, seq] the prefill's attention mask
    input_ids: torch.Tensor | None = None  # [batch, seq] the prefill's tokens
    vetoed: set[tuple[int, ...]] = field(default_factory=set)
    decision: GateDecision | None = None
    by_prompt: dict[tuple[int, ...], tuple[bool, torch.Tensor, float]] | None = None  # when recording
    gate_seconds: float = 0.0  # time spent deciding (features, probe, scales), summed over prefills
    stop_after_gate: bool = False  # decide() runs the layers below the gate only


class _GateDecided(Exception):
    """Raised by the gate hook under :meth:`GatedProfile.decide`: the layers after the gate are not needed."""


class GatedLoRALinear(torch.nn.Module):
    """A linear module plus LoRA terms, each multiplied by its domain's per-sequence scale.

    ``y = base(x) + Σ_d scale[b, d] · (alpha_d / r_d) · B_d A_d x``, computed in float32 and rounded once to
    the base output's dtype; a sequence whose scales are all zero gets ``base(x)`` exactly.

    Args:
        base: the original linear module (its weights are used, not copied).
        parts: per domain of the profile that adapts this module, ``(domain index, A [r, in], B [out, r],
            alpha / r)``.
        state: the profile's shared state (its ``scale`` is [batch, n_domains]).

    Examples:
        >>> lin = torch.nn.Linear(4, 3)
        >>> state = _State(scale=torch.tensor([[0.0], [1.0]]))
        >>> gated = GatedLoRALinear(lin, [(0, torch.ones(1, 4), torch.ones(3, 1), 1.0)], state)
        >>> x = torch.ones(2, 1, 4)
        >>> (gated(x) - lin(x))[:, 0, 0].tolist()
        [0.0, 4.0]
    """

    def __init__(self, base: torch.nn.Linear, parts: list[tuple[int, torch.Tensor, torch.Tensor, float]],
                 state: _State):
        super().__init__()
        self.base = base
        device = base.weight.device
        self.parts = [(d, a.to(device=device, dtype=torch.float32), b.to(device=device, dtype=torch.float32), s)
                      for d, a, b, s in parts]
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        scale = self.state.scale
        if scale is None or not bool(scale.any()):
            return out
        scale = scale.to(x.device)
        x32 = x.to(torch.float32)
        total = out.to(torch.float32)
        for d, a, b, s in self.parts:
            column = scale[:, d]
            if not bool(column.any()):
                continue
            total = total + ((x32 @ a.T) @ b.T) * (s * column).view(-1, *([1] * (x.dim() - 1)))
        return total.to(out.dtype)


class GatedProfile:
    """A profile as one model: base weights, the domains' LoRA unmerged, the gate choosing per sequence.

    Args:
        model: the base chat model (not modified; the profile's model shares its weights).
        adapters: one baked adapter per domain of the profile, as baked (no composition weight applied).
        gate: the profile's domain gate (it must open for exactly the adapters' domains). Routing needs a
            domain probe (``probe="domains"``); a binary gate can only route ``"merged"``.
        routing: ``"routed"`` (one domain's delta per prompt, the domain the probe names) or ``"merged"``
            (every domain's delta at ``compose_weight`` for the prompts the gate opens for).
        compose_weight: the delta weight of each domain under ``"merged"`` routing with two or more domains.

    Attributes:
        hf_model: the gated Hugging Face model (use it wherever palette-lens takes an HF model, e.g.
            ``model.generate(prompts, model=profile.hf_model)``, or call it like any causal LM).
        domains: the profile's domains, in the adapters' order.
        decision: the gate's :class:`GateDecision` for the prompts of the last :meth:`generate` (in their
            order) or of the last prefill otherwise (None before the first).

    Raises:
        PaletteError: no adapters, a domain twice, a gate for other domains, an adapter at or below the gate's
            layer (the decision would come after it), or routing that needs a domain probe.
        AdapterMismatchError: an adapter or the gate belongs to another base model.

    Examples:
        >>> profile = GatedProfile(model, [cyber, hate], gate)                       # doctest: +SKIP
        >>> profile.generate(["Write a port scanner.", "How do I make a bomb?"])     # doctest: +SKIP
        >>> profile.decision.scale                                                   # doctest: +SKIP
        tensor([[1., 0.], [0., 0.]])
    """

    def __init__(self, model: ChatModel, adapters: Sequence[BakedAdapter], gate: DomainGate,
                 routing: Routing = "routed", compose_weight: float = 0.85):
        adapters = list(adapters)
        domains = tuple(a.domain for a in adapters)
        if not adapters:
            raise PaletteError("a gated profile needs at least one adapter")
        if len(set(domains)) != len(domains):
            raise PaletteError(f"a gated profile takes one adapter per domain, got {'+'.join(domains)}")
        if set(gate.domains) != set(domains):
            raise PaletteError(f"the gate opens for {'+'.join(gate.domains)}, but the adapters are for "
                               f"{'+'.join(domains)}")
        if routing not in ("routed", "merged"):
            raise PaletteError(f"unknown routing {routing!r} (routed or merged)")
        if routing == "routed" and len(domains) > 1 and not gate.classes:
            raise PaletteError("routing by domain needs a gate with a domain probe (probe='domains'); "
                               "a binary gate can only route 'merged'")
        early = [a for a in adapters if a.layer_index < gate.layer]
        if early:
            raise PaletteError(f"adapter {early[0].domain!r} sits at block {early[0].layer_index}, before the gate's "
                               f"layer {gate.layer}: the gate would decide after it ran")
        for a in adapters:
            a.check_base(model)
        gate.check_model(model)
        self.model, self.gate, self.routing, self.domains = model, gate, routing, domains
        self.weight = 1.0 if routing == "routed" or len(domains) == 1 else float(compose_weight)
        self._state = _State()
        self.hf_model = plain_hf_model(model)
        self._wrap_modules(adapters)
        self._install_gate()

    # ------------------------------------------------------------------ building
    def _wrap_modules(self, adapters: Sequence[BakedAdapter]) -> None:
        parts: dict[str, list[tuple[int, torch.Tensor, torch.Tensor, float]]] = {}
        for d, adapter in enumerate(adapters):
            for name in adapter.module_names:
                parts.setdefault(name, []).append((d, adapter.lora_A[name], adapter.lora_B[name], adapter.scaling))
        for name, module_parts in parts.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.hf_model.get_submodule(parent_name)
            setattr(parent, child, GatedLoRALinear(getattr(parent, child), module_parts, self._state))

    def _install_gate(self) -> None:
        state = self._state

        def remember_inputs(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[1] > 1:  # a prefill (decoding steps feed one token)
                state.input_ids, state.mask = ids, kwargs.get("attention_mask")

        def decide(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] > 1 or state.scale is None or state.scale.shape[0] != hidden.shape[0]:
                t0 = time.perf_counter()
                self._decide(hidden)
                state.gate_seconds += time.perf_counter() - t0
            if state.stop_after_gate:
                raise _GateDecided

        layer = self.hf_model.get_submodule(self.model.decoder_layer_prefix(self.gate.layer))
        self._handles = [
            self.hf_model.register_forward_pre_hook(remember_inputs, with_kwargs=True),
            layer.register_forward_pre_hook(decide, with_kwargs=True),
        ]

    # ------------------------------------------------------------------ deciding
    def _prompt_ends(self, batch: int, seq: int, device: torch.device) -> torch.Tensor:
        """[batch] index of the last token of each sequence's prompt: the end of its last post-instruction run.

        A sequence without the chat template's post-instruction tokens (a raw forward call) ends at its last
        real token; left padding is read from the prefill's attention mask.
        """
        ids, mask = self._state.input_ids, self._state.mask
        arange = torch.arange(seq, device=device)
        if mask is not None and mask.shape == (batch, seq):
            real = mask.to(device).bool()
            last = torch.where(real, arange, -1).max(-1).values  # last real token (any padding side)
        else:
            real, last = None, torch.full((batch,), seq - 1, device=device)
        post = torch.tensor(self.model.post_instruction_ids, device=device)
        n = post.numel()
        if ids is None or ids.shape != (batch, seq) or n == 0 or seq < n:
            return last
        windows = ids.to(device).unfold(1, n, 1)  # [batch, seq - n + 1, n]
        match = (windows == post).all(-1)
        if real is not None:
            match &= real.unfold(1, n, 1).all(-1)
        end = torch.where(match, arange[: seq - n + 1], -1).max(-1).values + n - 1  # [batch]
        return torch.where(match.any(-1), end, last)

    def _features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The gate's features from the gate layer's input: [batch, d_model] float32 (CPU)."""
        batch, seq, _ = hidden.shape
        end = self._prompt_ends(batch, seq, hidden.device)
        offsets = torch.tensor(self.model.positions, device=hidden.device)  # negative, e.g. [-5, ..., -1]
        index = (end[:, None] + 1 + offsets[None]).clamp_min(0)  # [batch, n_positions]
        picked = hidden.to(torch.float32).gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        x = picked.mean(1) if self.gate.feature == "mean" else picked[:, -1]
        return x.cpu()

    def _decide(self, hidden: torch.Tensor) -> None:
        x = self._features(hidden)
        probability = self.gate.probability(x)
        opened = probability > self.gate.threshold
        rows = self._prompt_ids(hidden.shape[0])
        for row, key in enumerate(rows):
            if key in self._state.vetoed:
                opened[row] = False
        n = len(self.domains)
        if self.routing == "routed" and n > 1:
            per_class = self.gate.domain_probabilities(x)
            reading = torch.stack([per_class[d] for d in self.domains], dim=-1)  # [batch, n_domains]
            scale = torch.nn.functional.one_hot(reading.argmax(-1), n).to(torch.float32)
        else:
            scale = torch.full((x.shape[0], n), self.weight, dtype=torch.float32)
        scale = scale * opened[:, None].to(torch.float32)
        self._state.scale = scale.to(module_device(self.hf_model))
        self._state.decision = GateDecision(opened.clone(), scale, probability)
        if self._state.by_prompt is not None:
            for row, key in enumerate(rows):
                self._state.by_prompt[key] = (bool(opened[row]), scale[row], float(probability[row]))

    def _prompt_ids(self, batch: int) -> list[tuple[int, ...]]:
        """The real (unpadded) prompt tokens of each sequence of the current prefill ([] when unknown)."""
        ids, mask = self._state.input_ids, self._state.mask
        if ids is None or ids.shape[0] != batch:
            return []
        ends = self._prompt_ends(batch, ids.shape[1], ids.device).tolist()
        rows = []
        for row, end in enumerate(ends):
            tokens = ids[row, : end + 1]
            rows.append(tuple((tokens if mask is None else tokens[mask[row, : end + 1].bool()]).tolist()))
        return rows

    @property
    def decision(self) -> GateDecision | None:
        return self._state.decision

    @property
    def gate_seconds(self) -> float:
        """Seconds spent deciding (features, probe and scales) over every prefill so far."""
        return self._state.gate_seconds

    def added_bytes(self) -> int:
        """Memory the profile adds to the base model: its LoRA factors (the weights are shared, not copied)."""
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                   for m in self.hf_model.modules() if isinstance(m, GatedLoRALinear) for _, a, b, _ in m.parts)

    # ------------------------------------------------------------------ using it
    @contextmanager
    def segment_veto(self, prompts: Sequence[str]) -> Iterator[None]:
        """Inside the block, prefills of the ``prompts`` whose sentences the gate vetoes stay shut.

        The gate reads each sentence of each prompt up to its layer (:meth:`DomainGate.vetoed`); a gate
        without a segment veto changes nothing.
        """
        if self.gate.segment_veto is None or not prompts:
            yield
            return
        vetoed = [p for p, v in zip(prompts, self.gate.vetoed(self.model, list(prompts))) if v]
        self._state.vetoed = {tuple(self.model.encode([p])["input_ids"][0].tolist()) for p in vetoed}
        try:
            yield
        finally:
            self._state.vetoed = set()

    @torch.no_grad()
    def decide(self, prompts: Sequence[str], batch_size: int = 32) -> GateDecision:
        """The gate's decisions for ``prompts`` (in their order), running only the layers below the gate.

        The same decisions the prompts' prefills take (segment veto included), without running the rest of
        the model: use it to see which prompts a profile would answer, or to route requests.

        Examples:
            >>> profile.decide(["Write a port scanner.", "Bake a cake."]).opened          # doctest: +SKIP
            tensor([ True, False])
        """
        prompts = list(prompts)
        opened, scales, probabilities = [], [], []
        state = self._state
        with self.segment_veto(prompts):
            state.stop_after_gate = True
            try:
                for batch in self.model.batches(prompts, batch_size):
                    enc = self.model.encode(batch)
                    enc = {k: v.to(module_device(self.hf_model)) for k, v in enc.items()}
                    try:
                        self.hf_model(**enc, use_cache=False)
                    except _GateDecided:
                        pass
                    assert state.decision is not None
                    opened.append(state.decision.opened)
                    scales.append(state.decision.scale.cpu())
                    probabilities.append(state.decision.probability)
            finally:
                state.stop_after_gate = False
                state.scale = None
        n = len(self.domains)
        decision = GateDecision(
            torch.cat(opened) if opened else torch.zeros(0, dtype=torch.bool),
            torch.cat(scales) if scales else torch.zeros(0, n),
            torch.cat(probabilities) if probabilities else torch.zeros(0),
        )
        state.decision = decision
        return decision

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16,
                 desc: str | None = None) -> list[str]:
        """Greedy completions of the gated profile (:meth:`ChatModel.generate` on :attr:`hf_model`).

        Prompts the gate opens for are answered with their domains' deltas, the others as by the base model;
        with a segment veto, the prompts' sentences are read first (:meth:`segment_veto`).

        Examples:
            >>> profile.generate(["Write a keylogger in Python."], max_new_tokens=32)   # doctest: +SKIP
        """
        with self.segment_veto(prompts), self._recording(prompts):
            return self.model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       desc=desc, model=self.hf_model)

    @contextmanager
    def _recording(self, prompts: Sequence[str]) -> Iterator[None]:
        """Record every prefill's decision by prompt; on exit, :attr:`decision` lists ``prompts`` in order."""
        self._state.by_prompt = {}
        try:
            yield
            keys = [tuple(self.model.encode([p])["input_ids"][0].tolist()) for p in prompts]
            got = [self._state.by_prompt[k] for k in keys]
            self._state.decision = GateDecision(
                torch.tensor([g[0] for g in got]), torch.stack([g[1] for g in got]),
                torch.tensor([g[2] for g in got]))
        finally:
            self._state.by_prompt = None

    @torch.no_grad()
    def logits(self, prompts: Sequence[str]) -> torch.Tensor:
        """Logits at every position of the rendered prompts: [batch, seq, vocab] (float32, left padded).

        Examples:
            >>> profile.logits(["Write a port scanner."]).shape                       # doctest: +SKIP
            torch.Size([1, 24, 151936])
        """
        enc = self.model.encode(prompts)
        enc = {k: v.to(module_device(self.hf_model)) for k, v in enc.items()}
        with self.segment_veto(prompts):
            return self.hf_model(**enc, use_cache=False).logits.float()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A forward call of :attr:`hf_model` (e.g. ``profile(input_ids=..., attention_mask=...)``)."""
        return self.hf_model(*args, **kwargs)
