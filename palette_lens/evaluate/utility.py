"""Utility benchmark: HumanEval pass@1 of vanilla, of each merged profile and of each gated profile.

"Without sacrificing general utility" is measured elsewhere as first-token KL and refusal on harmless prompts;
this module adds a task benchmark on :mod:`palette_lens.evaluate.humaneval`: each problem is answered greedily
(:mod:`palette_lens.generation.greedy`, batched and left padded) and its code checked against the problem's
tests in the sandbox. pass@1 is the share of problems whose tests pass, with a Wilson 95% interval.

Variants (:func:`measure_utility`): ``vanilla``; each profile merged (named as in ``metrics.json``, e.g.
``cyber+disinformation``); and, where a gate is given for a profile, ``"<profile> gated"``, the profile as one
gated model (:class:`palette_lens.gate.gated_profile.GatedProfile`, routed where the gate names domains). Vanilla
is generated once (and cached on disk); a merged profile checks vanilla's completions as drafts
(:func:`palette_lens.generation.drafts.generate_with_drafts`) and generates only where it differs; a gated profile
generates only the prompts its gate opens for and reuses vanilla's replies where it stays shut (a shut gate is the
base model exactly). Identical code of the same problem is executed once.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palette_lens.compose.profiles import DEFAULT_COMPOSE_WEIGHT, Profile, merged_profile, profile_adapters
from palette_lens.errors import PaletteError
from palette_lens.evaluate.humaneval import (
    PROMPT_TEMPLATE,
    Problem,
    chat_prompt,
    check_solutions,
    extract_code,
    load_problems,
    python_block_closed,
)
from palette_lens.gate.gated_profile import GatedProfile
from palette_lens.util.paths import cache_root
from palette_lens.util.sandbox import ExecutionResult
from palette_lens.util.stats import wilson_interval

if TYPE_CHECKING:
    from palette_lens.adapters.baked import BakedAdapter
    from palette_lens.gate.domain_gate import DomainGate
    from palette_lens.generation.greedy import Generations
    from palette_lens.models.chat_model import ChatModel

log = logging.getLogger(__name__)

#: The variant name of the unmodified model.
VANILLA = "vanilla"

#: Suffix of a gated profile's variant name (``"cyber gated"``), as in the evaluation's variants.
GATED_SUFFIX = " gated"


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class UtilityConfig:
    """Settings of the utility benchmark.

    Attributes:
        max_new_tokens: greedy tokens per reply (replies repeat the signature and docstring; the longest
            reply of the default model on the 164 problems is well below 512).
        batch_size: sequences per generation batch.
        first_phase: tokens every reply gets before only the unfinished ones are continued.
        verify_batch_size: sequences per teacher-forced pass when a profile checks vanilla's replies.
        use_drafts: a merged profile checks vanilla's replies as drafts and generates only where it differs
            (equal to generating, up to float rounding); False: every reply is generated.
        timeout_s: wall-clock limit per program.
        workers: programs executed at once.
        template: the chat request (:data:`PROMPT_TEMPLATE`).
        stop_after_code: a profile's reply stops once its first python code block is closed (the program
            :func:`palette_lens.evaluate.humaneval.extract_code` takes cannot change after it; the explanation
            models write after the code is not generated). Vanilla's replies are always generated in full: they
            are the profiles' drafts and are cached.
        cache: keep vanilla's replies in the user cache (``~/.cache/palette-lens/generations``), keyed by the
            model's weights and dtype, the prompts and the generation settings: a later run on the same model
            measures its profiles without generating vanilla's replies again.

    Examples:
        >>> UtilityConfig(timeout_s=5).max_new_tokens
        512
    """

    max_new_tokens: int = 512
    batch_size: int = 16
    first_phase: int = 256
    verify_batch_size: int = 8
    use_drafts: bool = True
    stop_after_code: bool = True
    timeout_s: float = 10.0
    workers: int = 2
    template: str = PROMPT_TEMPLATE
    cache: bool = True


@dataclass
class UtilityResult:
    """pass@1 of one variant on the problems.

    Attributes:
        variant: ``"vanilla"``, a profile's name, or ``"<profile> gated"``.
        task_ids: the problems, in order.
        outcomes: the execution result per problem.
        completions: the model's reply per problem.
        opened: for a gated variant, how many prompts the gate opened for (None otherwise).
        seconds: wall time of generation and execution.

    Examples:
        >>> r = UtilityResult("vanilla", ["t/0", "t/1"], [ExecutionResult(True, "passed"),
        ...                   ExecutionResult(False, "failed")], ["", ""])
        >>> r.n, r.passed, r.pass_at_1, [round(x, 3) for x in r.ci]
        (2, 1, 0.5, [0.095, 0.905])
    """

    variant: str
    task_ids: list[str]
    outcomes: list[ExecutionResult]
    completions: list[str]
    opened: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def pass_at_1(self) -> float:
        return self.passed / self.n if self.n else 0.0

    @property
    def ci(self) -> list[float]:
        low, high = wilson_interval(self.passed, self.n)
        return [low, high]

    def to_dict(self) -> dict[str, Any]:
        """The ``utility.json`` entry: pass@1, n, the Wilson 95% interval, passed, the failed task ids and,
        for a gated variant, how many prompts the gate opened for.

        Examples:
            >>> UtilityResult("vanilla", ["t/0"], [ExecutionResult(True, "passed")], [""]).to_dict()["n"]
            1
        """
        out: dict[str, Any] = {"pass_at_1": self.pass_at_1, "n": self.n, "ci": self.ci, "passed": self.passed,
                               "failed": [t for t, o in zip(self.task_ids, self.outcomes) if not o.passed]}
        if self.opened is not None:
            out["opened"] = self.opened
        return out


def utility_table(results: Mapping[str, UtilityResult]) -> dict[str, dict[str, Any]]:
    """``{variant: {"pass_at_1", "n", "ci", "passed", "failed"[, "opened"]}}``, as written to ``utility.json``.

    Examples:
        >>> r = UtilityResult("vanilla", ["t/0"], [ExecutionResult(True, "passed")], [""])
        >>> utility_table({"vanilla": r})["vanilla"]["pass_at_1"]
        1.0
    """
    return {name: r.to_dict() for name, r in results.items()}


# ---------------------------------------------------------------------- the benchmark
class _Runner:
    """Generation and execution with vanilla's replies and executed programs kept for reuse."""

    def __init__(self, model: ChatModel, problems: Sequence[Problem], config: UtilityConfig) -> None:
        from palette_lens.models.copies import plain_hf_model

        self.model, self.problems, self.config = model, list(problems), config
        self.prompts = [chat_prompt(p, config.template) for p in self.problems]
        self.plain = plain_hf_model(model)
        self.vanilla_gen: Generations | None = None
        self.executed: dict[tuple[int, str], ExecutionResult] = {}

    def generate(self, lm: Any, desc: str) -> Generations:
        from palette_lens.generation.drafts import generate_with_drafts
        from palette_lens.generation.greedy import generate_completions

        c = self.config
        if lm is self.plain:  # vanilla's replies in full: they are cached and serve as every profile's drafts
            return generate_completions(self.model, self.prompts, lm=lm, max_new_tokens=c.max_new_tokens,
                                        batch_size=c.batch_size, first_phase=c.first_phase, desc=desc)
        stop_when = python_block_closed if c.stop_after_code else None
        if self.vanilla_gen is None or not c.use_drafts:
            return generate_completions(self.model, self.prompts, lm=lm, max_new_tokens=c.max_new_tokens,
                                        batch_size=c.batch_size, first_phase=c.first_phase, desc=desc,
                                        stop_when=stop_when)
        return generate_with_drafts(self.model, lm, self.prompts, self.vanilla_gen, max_new_tokens=c.max_new_tokens,
                                    batch_size=c.batch_size, first_phase=c.first_phase,
                                    verify_batch_size=c.verify_batch_size, desc=desc, stop_when=stop_when)

    def generate_some(self, lm: Any, which: Sequence[bool], desc: str) -> list[str]:
        """Replies of ``lm`` to the prompts flagged in ``which``, vanilla's to the others."""
        from palette_lens.generation.greedy import generate_completions

        c = self.config
        texts = list(self.vanilla().texts)
        idx = [i for i, flag in enumerate(which) if flag]
        if idx:
            gen = generate_completions(self.model, [self.prompts[i] for i in idx], lm=lm,
                                       max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
                                       first_phase=c.first_phase, desc=desc,
                                       stop_when=python_block_closed if c.stop_after_code else None)
            for i, text in zip(idx, gen.texts):
                texts[i] = text
        return texts

    def cache_path(self) -> Path:
        """Where vanilla's replies to these prompts, with these settings, are cached."""
        from palette_lens.generation.greedy import CACHE_VERSION

        c = self.config
        digest = hashlib.sha256(json.dumps([
            "humaneval", CACHE_VERSION, self.model.cache_key, self.model.system_prompt, c.max_new_tokens,
            c.first_phase, self.prompts,
        ]).encode()).hexdigest()[:24]
        return cache_root() / "generations" / f"humaneval-{digest}.safetensors"

    def vanilla(self) -> Generations:
        from palette_lens.generation.greedy import load_generations, save_generations

        if self.vanilla_gen is None:
            path = self.cache_path() if self.config.cache else None
            cached = load_generations(path) if path is not None and path.is_file() else None
            if cached is not None and len(cached.texts) == len(self.prompts):
                self.vanilla_gen = cached
                log.info("%s: %d replies read from the cache %s", VANILLA, len(self.prompts), path)
                return cached
            self.vanilla_gen = self.generate(self.plain, VANILLA)
            log.info("%s: %d replies, %d tokens in %.1fs", VANILLA, len(self.prompts),
                     sum(self.vanilla_gen.n_tokens), self.vanilla_gen.seconds)
            if path is not None:
                save_generations(path, self.vanilla_gen)
        return self.vanilla_gen

    def score(self, variant: str, texts: Sequence[str], t0: float, opened: int | None = None) -> UtilityResult:
        codes = [extract_code(t, p) for t, p in zip(texts, self.problems)]
        todo = [i for i, code in enumerate(codes) if (i, code) not in self.executed]
        outcomes = check_solutions([self.problems[i] for i in todo], [codes[i] for i in todo], self.config.timeout_s,
                                   self.config.workers, desc=f"{variant}: tests" if len(todo) > 1 else None)
        for i, outcome in zip(todo, outcomes):
            self.executed[(i, codes[i])] = outcome
        result = UtilityResult(variant, [p.task_id for p in self.problems],
                               [self.executed[(i, code)] for i, code in enumerate(codes)], list(texts), opened,
                               time.perf_counter() - t0, {"executed": len(todo)})
        log.info("%s: pass@1 %.3f (%d/%d)%s in %.1fs", variant, result.pass_at_1, result.passed, result.n,
                 "" if opened is None else f", gate opened {opened}", result.seconds)
        return result


def measure_utility(
    model: ChatModel,
    adapters: Mapping[str, BakedAdapter],
    profiles: Sequence[Profile | str] = (),
    gates: Mapping[str, DomainGate] | None = None,
    *,
    limit: int | None = None,
    config: UtilityConfig = UtilityConfig(),
    compose_weight: float = DEFAULT_COMPOSE_WEIGHT,
    vanilla: bool = True,
) -> dict[str, UtilityResult]:
    """HumanEval pass@1 of vanilla, of each profile merged, and of each profile behind its gate.

    Vanilla's replies are generated once. Each profile's merged model (:func:`palette_lens.compose.profiles.merged_profile`
    of :func:`palette_lens.compose.profiles.profile_adapters`, so profiles of two or more domains use
    ``compose_weight``) is built, used and released before the next one; it checks vanilla's replies as drafts
    and generates only where it differs (``config.use_drafts``). A gated profile is the profile as one gated model
    (:class:`~palette_lens.gate.gated_profile.GatedProfile`; routed when the gate names domains, else merged at
    ``compose_weight``): it generates the prompts its gate opens for and reuses vanilla's replies for the rest.

    Args:
        model: the base chat model (left unchanged).
        adapters: domain → baked adapter (at least the profiles' domains).
        profiles: the profiles (:class:`~palette_lens.compose.profiles.Profile` or ``"cyber+hate"``).
        gates: profile name → its domain gate; each such profile also gets a ``"<profile> gated"`` variant.
        limit: only the first ``limit`` problems (None: all 164).
        config: generation and sandbox settings.
        compose_weight: ΔW weight of each adapter in a profile of two or more domains.
        vanilla: include the ``"vanilla"`` variant in the result (it is generated either way).

    Returns:
        variant name → :class:`UtilityResult`, vanilla first, then per profile the merged and the gated variant.

    Raises:
        PaletteError: ``limit`` outside 1..164, a profile domain without an adapter, a gate for a profile not
            asked for, or a bad ``compose_weight``.
        AdapterMismatchError: an adapter or gate was made on another model.

    Examples:
        >>> run = pl.load_run("builtin", model)                                        # doctest: +SKIP
        >>> results = measure_utility(model, run.adapters, ["cyber"], {"cyber": run.gate("cyber", model)},
        ...                           limit=10)                                        # doctest: +SKIP
        >>> {k: r.pass_at_1 for k, r in results.items()}                               # doctest: +SKIP
        {'vanilla': 0.6, 'cyber': 0.6, 'cyber gated': 0.6}
    """
    chosen = [p if isinstance(p, Profile) else Profile.parse(p) for p in profiles]
    gates = dict(gates or {})
    unknown = [name for name in gates if name not in {p.name for p in chosen}]
    if unknown:
        raise PaletteError(f"gates given for profiles not measured: {', '.join(unknown)}")
    picked = {p.name: profile_adapters(p, adapters, compose_weight) for p in chosen}  # checks before generating
    for gate in gates.values():
        gate.check_model(model)
    problems = load_problems(limit)
    runner = _Runner(model, problems, config)
    out: dict[str, UtilityResult] = {}
    t0 = time.perf_counter()
    vanilla_gen = runner.vanilla()
    vanilla_result = runner.score(VANILLA, vanilla_gen.texts, t0)
    if vanilla:
        out[VANILLA] = vanilla_result
    for profile in chosen:
        t0 = time.perf_counter()
        lm = merged_profile(model, picked[profile.name])
        try:
            gen = runner.generate(lm, profile.name)
        finally:
            del lm
            gc.collect()
        result = runner.score(profile.name, gen.texts, t0)
        if gen.verified:
            result.extra["decoding"] = {k: gen.verified.count(k) for k in ("generated", "verified", "continued")}
        out[profile.name] = result
        gate = gates.get(profile.name)
        if gate is not None:
            t0 = time.perf_counter()
            name = profile.name + GATED_SUFFIX
            gated = GatedProfile(model, [adapters[d] for d in profile.domains], gate, compose_weight=compose_weight,
                                 routing="routed" if gate.classes or len(profile) == 1 else "merged")
            opens = gated.decide(runner.prompts).opened.tolist()
            texts = runner.generate_some(gated.hf_model, opens, name)
            out[name] = runner.score(name, texts, t0, opened=sum(opens))
    return out
