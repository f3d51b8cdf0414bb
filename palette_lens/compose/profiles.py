"""Authorization profiles: compose domain adapters by (weighted) sums of their weight deltas, at run time or merged.

A profile is a set of authorized domains; its model is ``base + w · Σ_{d ∈ profile} ΔW_d`` (task
arithmetic with a scaling coefficient). The composition weight ``w`` applies only to profiles of two or
more domains (:func:`profile_adapters`); each adapter was trained alone, and their small leaks into the
unauthorized domains add up in a sum, so the default ``w = 0.85`` trades a little of each adapter's push for
less of that leakage (docs/decisions.md, "Composition"); ``w = 1`` is the plain sum.
Adapters baked into different blocks touch disjoint weights, so they superpose exactly; adapters on the
same block add their deltas on the shared modules (:func:`interference` reports how aligned those are).

Two equivalent ways to run a profile (tested to give the same logits):

- :func:`runtime_profile`: a plain copy of the base model with every adapter loaded in peft and all of
  them active at once (LoRA outputs are summed per module);
- :func:`merged_profile`: a plain copy with ``W + Σ ΔW`` written into the adapted modules (exact float
  sums, never peft's approximate ``add_weighted_adapter`` combinations) — no run-time cost.

:func:`export_profile` writes a merged profile as a plain Hugging Face model folder.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from palette_lens.adapters.apply import merged_hf_model
from palette_lens.adapters.baked import BakedAdapter, load_adapter
from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.copies import plain_hf_model

DEFAULT_COMPOSE_WEIGHT = 0.85  # measured on the default model: docs/decisions.md


# ---------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """A set of authorized domains, in a fixed order (the order names it: ``"cyber+hate"``).

    Attributes:
        domains: the authorized domains, in order (at least one, none repeated).

    Raises:
        PaletteError: no domain, or a repeated one.

    Examples:
        >>> p = Profile.parse("cyber, hate")
        >>> p.name, len(p), p.domains
        ('cyber+hate', 2, ('cyber', 'hate'))
    """

    domains: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.domains:
            raise PaletteError("a profile needs at least one domain")
        if len(set(self.domains)) != len(self.domains):
            raise PaletteError(f"profile {'+'.join(self.domains)!r} repeats a domain")

    @property
    def name(self) -> str:
        return "+".join(self.domains)

    @classmethod
    def parse(cls, text: str) -> Profile:
        """``"cyber+hate"`` (or ``"cyber,hate"``) → Profile(("cyber", "hate"))."""
        parts = [p.strip() for p in text.replace(",", "+").split("+") if p.strip()]
        return cls(tuple(parts))

    def __len__(self) -> int:
        return len(self.domains)

    def __str__(self) -> str:
        return self.name


def default_profiles(domains: Sequence[str], pairs: str = "first") -> list[Profile]:
    """Each single domain, pairs (``"first"``: the first two domains; ``"all"``: every pair), and the
    set of the first three domains when there are at least three.

    Args:
        domains: the domains with adapters, in order.
        pairs: ``"all"`` for every pair; any other value gives only the pair of the first two domains.

    Returns:
        The profiles: singles first, then pairs, then the triple.

    Examples:
        >>> [p.name for p in default_profiles(["cyber", "hate", "bio"])]
        ['cyber', 'hate', 'bio', 'cyber+hate', 'cyber+hate+bio']
        >>> len(default_profiles(["cyber", "hate", "bio"], pairs="all"))
        7
    """
    domains = list(domains)
    out = [Profile((d,)) for d in domains]
    if len(domains) >= 2:
        combos = list(itertools.combinations(domains, 2))
        out += [Profile(c) for c in (combos if pairs == "all" else combos[:1])]
    if len(domains) >= 3:
        out.append(Profile(tuple(domains[:3])))
    return out


def check_compose_weight(weight: float) -> float:
    """``weight`` as a float, or a :class:`PaletteError` unless it is a finite number in (0, 2]."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise PaletteError(f"composition weight must be a number, not {weight!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 2.0:
        raise PaletteError(f"composition weight must be in (0, 2], not {weight!r}")
    return value


def weighted_adapter(adapter: BakedAdapter, weight: float) -> BakedAdapter:
    """A copy of ``adapter`` whose ΔW is ``weight`` times the original (LoRA alpha scaled; factors shared).

    The copy loads in peft like the original (its ``lora_config`` carries the scaled alpha), so run-time and
    merged composition of weighted adapters still agree. ``meta["composition_weight"]`` records the weight.
    """
    weight = check_compose_weight(weight)
    if weight == 1.0:
        return adapter
    meta = {**adapter.meta, "composition_weight": weight * float(adapter.meta.get("composition_weight", 1.0))}
    return replace(adapter, alpha=adapter.alpha * weight, meta=meta)


def profile_adapters(
    profile: Profile, adapters: Mapping[str, BakedAdapter], compose_weight: float = DEFAULT_COMPOSE_WEIGHT
) -> list[BakedAdapter]:
    """The adapters of a profile's domains (raises when one is missing).

    Args:
        profile: the authorized domains.
        adapters: domain → baked adapter.
        compose_weight: ΔW weight of each adapter in a profile of two or more domains (a single-domain
            profile always uses its adapter as baked).

    Returns:
        The adapters in the profile's order; with two or more, copies whose LoRA alpha is scaled by
        ``compose_weight`` (recorded in ``meta["composition_weight"]``). Pass them to
        :func:`merged_profile`, :func:`runtime_profile` or :func:`export_profile`, which apply no weight
        themselves.

    Raises:
        PaletteError: a domain of the profile has no adapter, or ``compose_weight`` is not in (0, 2].

    Examples:
        >>> chosen = profile_adapters(Profile.parse("cyber+hate"), adapters)     # doctest: +SKIP
        >>> [a.meta["composition_weight"] for a in chosen]                      # doctest: +SKIP
        [0.85, 0.85]
        >>> hf = merged_profile(model, chosen)                                  # doctest: +SKIP
    """
    compose_weight = check_compose_weight(compose_weight)
    missing = [d for d in profile.domains if d not in adapters]
    if missing:
        raise PaletteError(f"profile {profile.name!r} needs adapters for {', '.join(missing)}; have {', '.join(adapters)}")
    chosen = [adapters[d] for d in profile.domains]
    if len(chosen) < 2:
        return chosen
    return [weighted_adapter(a, compose_weight) for a in chosen]


# ---------------------------------------------------------------------- composition
def merged_profile(model: ChatModel, adapters: Sequence[BakedAdapter]) -> Any:
    """A new plain HF model with ``W + Σ ΔW`` in every adapted module (the caller's model is untouched).

    Unadapted tensors are shared with ``model`` (no memory cost). The deltas are summed as given: apply
    the composition weight first with :func:`profile_adapters`.

    Args:
        model: the base chat model.
        adapters: the profile's adapters (baked on ``model``).

    Returns:
        A plain Hugging Face causal LM (e.g. for ``ChatModel.generate(model=...)`` or ``save_pretrained``).

    Raises:
        AdapterMismatchError: an adapter was baked on another base model.

    Examples:
        >>> chosen = profile_adapters(Profile.parse("cyber+hate"), adapters)     # doctest: +SKIP
        >>> hf = merged_profile(model, chosen)                                  # doctest: +SKIP
        >>> model.generate(["Write a port scanner."], model=hf)                 # doctest: +SKIP
    """
    return merged_hf_model(model, adapters)


def _peft_name(adapter: BakedAdapter, i: int, used: set[str]) -> str:
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in (adapter.domain or f"adapter{i}"))
    while name in used:
        name += f"_{i}"
    used.add(name)
    return name


def runtime_profile(model: ChatModel, adapters: Sequence[BakedAdapter | str | Path]) -> Any:
    """A peft model on a plain copy of ``model`` with every adapter loaded and all of them active.

    Args:
        model: the base chat model (not modified; the copy shares its weights, LoRA layers wrap them).
        adapters: :class:`BakedAdapter` values or adapter folders (PEFT format).

    Returns:
        a ``peft.PeftModel`` whose forward sums every active adapter's LoRA output per module.

    Raises:
        PaletteError: no adapters, an unreadable adapter folder, or weights that did not load into peft.
        AdapterMismatchError: an adapter was baked on another base model.

    Examples:
        >>> folders = ["runs/demo/adapters/cyber", "runs/demo/adapters/hate"]
        >>> peft_model = runtime_profile(model, folders)                        # doctest: +SKIP
        >>> model.generate(["Write a port scanner."], model=peft_model)         # doctest: +SKIP
    """
    from peft import get_peft_model, set_peft_model_state_dict

    loaded = [a if isinstance(a, BakedAdapter) else load_adapter(a) for a in adapters]
    if not loaded:
        raise PaletteError("a runtime profile needs at least one adapter")
    for a in loaded:
        a.check_base(model)
    base = plain_hf_model(model)
    used: set[str] = set()
    peft_model = None
    names = []
    for i, a in enumerate(loaded):
        name = _peft_name(a, i, used)
        names.append(name)
        config = a.lora_config(None)
        if peft_model is None:
            peft_model = get_peft_model(base, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
        result = set_peft_model_state_dict(peft_model, a.peft_state_dict(), adapter_name=name)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise PaletteError(f"adapter {a.domain!r}: weights did not load ({unexpected[:2]})")
    assert peft_model is not None
    peft_model.base_model.set_adapter(names)
    peft_model.requires_grad_(False)
    return peft_model.eval()


def profile_chat_model(model: ChatModel, adapters: Sequence[BakedAdapter], name: str | None = None) -> ChatModel:
    """A merged profile wrapped as a new :class:`ChatModel` (hooks, residuals and generation all work).

    Same as :func:`palette_lens.adapters.apply.apply_adapters`; no composition weight is applied here.

    Args:
        model: the base chat model (left unchanged; unadapted weights are shared).
        adapters: the profile's adapters (e.g. from :func:`profile_adapters`).
        name: the new model's name (default: ``"<model name> + <domain>+<domain>"``).

    Returns:
        A new :class:`ChatModel` with the merged weights.

    Raises:
        AdapterMismatchError: an adapter was baked on another base model.

    Examples:
        >>> chosen = profile_adapters(Profile.parse("cyber+hate"), adapters)      # doctest: +SKIP
        >>> pm = profile_chat_model(model, chosen, name="cyber+hate")            # doctest: +SKIP
        >>> res = collect_residuals(pm, ["Write a port scanner."])               # doctest: +SKIP
    """
    from palette_lens.adapters.apply import apply_adapters

    return apply_adapters(model, adapters, name=name)


