"""Leakage under adversarial prompts: does a profile keep refusing non-target requests that are dressed up?

A single-domain profile relaxes refusal for one authorized domain T. An attacker who is authorized for T (or
who pretends to be) can dress a *non-target* harmful request up so that it looks like T, or hide it. This
module builds such variants of the non-target test prompts and measures them:

- ``direct``: the non-target request as it is (the reference row);
- ``profession``: framed as the authorized profession ("As a penetration tester, I need this for my work. …");
- ``roleplay``: wrapped in a role-play jailbreak template (an actor in character, a novelist's villain, an
  "unrestricted assistant" persona, a hypothetical with a forced compliant opening);
- ``mixed``: a target-domain test request and the non-target request in one message.

Every variant contains the original request verbatim. Requests are sampled per profile with a seed, round-robin
over the non-target domains (so a cap keeps every domain represented), and every attack wraps the same
requests, so the rows of one profile are paired.

:func:`measure_leakage` runs the vanilla model and each profile's model (merged weights, as the pipeline
builds them with :func:`palette_lens.compose.profiles.merged_profile`) on the same prompts through
:class:`palette_lens.evaluate.evaluator.Evaluator` (the evaluation's greedy generation and keyword judge; the profile's
completions are checked against the vanilla ones as drafts), and returns a :class:`LeakageTable`: per profile ×
attack the two refusal rates with Wilson intervals, the drop (vanilla − profile) in points, i.e. the
profile's extra leakage, and how much the attack adds to the profile's leakage on direct prompts.

:func:`augment_prompt_set` is the matching defence: non-target *train* prompts get adversarial variants (with
other template wordings than the measured ones) that a bake then treats as non-target prompts, where the
bake's hard-negative weighting picks them up (they sit close to the target domain).

Data ethics: the templates here only wrap harmful *requests*; nothing in this module holds an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from palette_lens.data.attacks import (
    ATTACK_KINDS,
    LEAKAGE_BUDGET_PTS,
    TARGET_KEY,
    AttackPrompt,
    attacks_from_prompt_set,
    select_requests,
)
from palette_lens.data.prompt_set import PromptSet
from palette_lens.errors import PaletteError
from palette_lens.evaluate.leakage_table import LeakageRow, LeakageTable, share

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class AttackConfig:
    """How the adversarial prompts are built.

    Attributes:
        kinds: attack kinds (``direct`` is the reference for "vs direct").
        limit: prompts per profile and attack kind (the same requests under every kind).
        seed: sampling seed.
        split: the prompt split the requests come from.
        mixed_order: "random", "target_first" or "nontarget_first".
        budget_pts: allowed extra leakage in points.
        target: also measure ``limit`` plain requests of the authorized domain(s) (:attr:`LeakageTable.target_rows`).

    Examples:
        >>> cfg = AttackConfig(kinds=("direct", "roleplay"), limit=8)
        >>> cfg.to_dict()["kinds"], cfg.split
        (['direct', 'roleplay'], 'test')
    """

    kinds: tuple[str, ...] = ATTACK_KINDS
    limit: int | None = 24
    seed: int = 0
    split: str = "test"
    mixed_order: str = "random"
    budget_pts: float = LEAKAGE_BUDGET_PTS
    target: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return d


def profile_lm(model: Any, spec: Any) -> Any:
    """A plain HF model for a profile given as a HF model, a :class:`ChatModel`, adapter(s) or adapter folder(s).

    Adapters (values or folders, alone or in a list) are merged into a copy of ``model`` with
    :func:`palette_lens.compose.profiles.merged_profile` (checked against the base model's fingerprint).
    """
    from palette_lens.adapters.baked import BakedAdapter, load_adapter
    from palette_lens.compose.profiles import merged_profile
    from palette_lens.models.chat_model import ChatModel
    from palette_lens.models.copies import plain_hf_model

    if isinstance(spec, ChatModel):
        return plain_hf_model(spec)
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if all(isinstance(s, (BakedAdapter, str, Path)) for s in items):
        adapters = [s if isinstance(s, BakedAdapter) else load_adapter(s, model) for s in items]
        if not adapters:
            raise PaletteError("a profile needs at least one adapter")
        return merged_profile(model, adapters)
    if isinstance(spec, (list, tuple)):
        raise PaletteError("a profile is a model, an adapter, an adapter folder, or a list of adapters / folders")
    return spec


def measure_leakage(
    model: Any,
    prompts: PromptSet,
    profiles: Mapping[str, Any],
    config: AttackConfig = AttackConfig(),
    eval_config: Any = None,
    *,
    authorized: Mapping[str, Sequence[str]] | None = None,
    cache: bool | str | Path = False,
    professions: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
    gates: Mapping[str, Any] | None = None,
) -> LeakageTable:
    """Non-target refusal of each profile under adversarial prompts, against vanilla on the same prompts.

    Args:
        model: the base :class:`palette_lens.models.loading.ChatModel` (never modified).
        prompts: the prompt set; requests come from ``config.split`` (the test split by default).
        profiles: profile name → a merged HF model, a :class:`ChatModel`, a :class:`BakedAdapter`, an adapter
            folder, a list of adapters / folders, or a :class:`palette_lens.gate.gated_profile.GatedProfile` (its
            gate decides which prompts its adapters act on; the others are answered as by the base model). The name gives the authorized domains ("cyber",
            "cyber+hate") unless ``authorized`` names them.
        config: attack settings.
        eval_config: :class:`palette_lens.evaluate.evaluator.EvalConfig` (default: the evaluation's defaults).
        authorized: profile name → authorized domains, for names that are not domain lists (e.g. to compare
            two adapters of the same domain side by side; they share the vanilla generations).
        cache: passed to :class:`palette_lens.evaluate.evaluator.Evaluator` (vanilla generations on disk).
        professions: overrides of :data:`PROFESSIONS`.
        progress: a progress bar over profiles.
        gates: profile name → a :class:`palette_lens.gate.domain_gate.DomainGate`: that profile answers only the prompts its
            gate opens for and vanilla answers the rest (the share opened per attack is in ``settings``).

    Returns:
        a :class:`LeakageTable` with one row per profile × attack kind.

    Raises:
        PaletteError: no profiles, an empty adapter list, a profile spec of an unknown form, or attacks that
            cannot be built (see :func:`palette_lens.data.attacks.build_attacks`).
        UnknownDomainError: an authorized domain that ``prompts`` does not contain.
        AdapterMismatchError: an adapter was baked on another base model.

    Note:
        Adapters given in ``profiles`` are merged as given (plain sum, no composition weight); pass
        :func:`palette_lens.compose.profiles.profile_adapters` output for weighted profiles.

    Examples:
        >>> table = measure_leakage(model, prompts, {"cyber": "runs/demo/adapters/cyber"})   # doctest: +SKIP
        >>> table                                                                           # doctest: +SKIP
    """
    from palette_lens.compose.profiles import Profile
    from palette_lens.evaluate.evaluator import EvalConfig, Evaluator
    from palette_lens.evaluate.results import EvalSet
    from palette_lens.gate.gated_profile import GatedProfile

    eval_config = eval_config or EvalConfig()
    if not profiles:
        raise PaletteError("no profiles to measure")
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in profiles:
        auth = tuple(authorized[name]) if authorized and name in authorized else Profile.parse(name).domains
        for d in auth:
            prompts.check_domain(d)
        groups.setdefault(auth, []).append(name)
    rows: list[LeakageRow] = []
    target_rows: list[LeakageRow] = []
    records: list[dict] = []
    bar = tqdm(total=len(profiles), desc="leakage", disable=not progress)
    gate_opened: dict[str, dict[str, float]] = {}
    for auth, names in groups.items():
        attacks = attacks_from_prompt_set(prompts, auth, config.kinds, config.limit, config.seed, config.split,
                                          config.mixed_order, professions)
        texts = {k: tuple(p.text for p in ps) for k, ps in attacks.items()}
        own: list[AttackPrompt] = []
        if config.target:  # authorized-domain requests, keyed "target" (generated, not draft-checked)
            own = [AttackPrompt(r, "target", d, r) for d, r in select_requests(
                {t: prompts.part(t, config.split) for t in auth}, config.limit, config.seed, "target")]
            texts[TARGET_KEY] = tuple(p.text for p in own)
        evalset = EvalSet(texts, config.split)
        evaluator = Evaluator(model, evalset, eval_config, cache=cache)
        vanilla = evaluator.vanilla().refused
        log.info("%s: %d adversarial prompts, vanilla refusal %s", "+".join(auth), len(evalset),
                 {k: f"{share(sum(v), len(v)):.0%}" for k, v in vanilla.items()})
        for name in names:
            spec = profiles[name]
            if isinstance(spec, GatedProfile):  # one model: its gate decides, its own forward answers
                lm, opens = spec.hf_model, spec.decide(evalset.flat()[0]).opened.tolist()
            else:
                lm = profile_lm(model, spec)
                gate = (gates or {}).get(name)
                opens = gate.opens(model, evalset.flat()[0]) if gate is not None else None
            # the evalset key of the target requests counts as authorized, so they are generated afresh
            result = evaluator.evaluate_lm(name, lm, (*auth, TARGET_KEY), kind="merged", opens=opens)
            relaxed = result.refused
            if opens is not None:
                gate_opened[name] = result.extra["gate_opened"]
            del lm
            if own:
                target_rows.append(LeakageRow.from_flags(name, auth, "target", own, vanilla[TARGET_KEY],
                                                         relaxed[TARGET_KEY], config.budget_pts))
            found = [LeakageRow.from_flags(name, auth, k, attacks[k], vanilla[k], relaxed[k], config.budget_pts)
                     for k in attacks]
            direct = next((r for r in found if r.attack == "direct"), None)
            if direct is not None:
                found = [replace(r, direct_drop_pts=direct.extra_leakage_pts) for r in found]
            rows += found
            for k, ps in [*attacks.items(), (TARGET_KEY, own)]:
                records += [{"profile": name, **p.to_dict(), "vanilla_refused": bool(v), "profile_refused": bool(q)}
                            for p, v, q in zip(ps, vanilla.get(k, ()), relaxed.get(k, ()))]
            bar.update(1)
    bar.close()
    settings = {"attack": config.to_dict(), "generation": asdict(eval_config),
                "authorized": {n: list(a) for a, ns in groups.items() for n in ns}}
    gates = {**(gates or {}), **{n: p.gate for n, p in profiles.items() if isinstance(p, GatedProfile)}}
    if gates:
        settings["gates"] = {n: g.meta() for n, g in gates.items() if n in profiles}
        settings["gate_opened"] = gate_opened
        settings["gate_routing"] = {n: p.routing for n, p in profiles.items() if isinstance(p, GatedProfile)}
    return LeakageTable(rows, getattr(model, "name", ""), settings, records, target_rows)
