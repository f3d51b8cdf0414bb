"""Evaluation on the test split: greedy generations, keyword-judged refusal per domain, F1, KL, latency.

What is measured for one model *variant* (vanilla, a merged profile, a hooked baseline):

- per domain, the refusal rate of greedy completions (keyword judge :func:`palette_lens.refusal.judge.is_refusal`)
  with a Wilson 95% interval, and the mean first-token refusal score;
- success / precision / recall / F1 over the harmful domains, with "answered" as the positive class and
  "authorized" (the domain is in the profile) as the truth;
- harmless first-token KL(vanilla ‖ variant) and harmless refusal rate; borderline over-refusal;
- latency per generated token, measured side by side for several variants (:func:`measure_latency`).

Generation (:mod:`palette_lens.generation.greedy`) is the expensive part on a CPU. Vanilla completions are
computed once per :class:`Evaluator` and reused: as drafts for every variant (checked in one teacher-forced
pass, regenerated only where the variant differs), and by the conditional-steering baseline for the prompts
whose condition does not fire. Latency lives in :mod:`palette_lens.evaluate.latency`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from palette_lens.data.records import HARMLESS
from palette_lens.evaluate.results import EvalSet, VariantResult
from palette_lens.generation.drafts import generate_with_drafts
from palette_lens.generation.greedy import (
    CACHE_VERSION,
    Generations,
    encode_prompts,
    generate_completions,
    load_generations,
    save_generations,
)
from palette_lens.generation.shared_prefix import PrefixStates, capture_prefix_states, first_changed_layer
from palette_lens.models.chat_model import ChatModel, Hook
from palette_lens.refusal.judge import MARKER_WINDOW, REFUSAL_MARKERS
from palette_lens.refusal.tokens import first_token_kl, opener_tokens
from palette_lens.util.paths import cache_root

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------- the evaluator
@dataclass(frozen=True)
class EvalConfig:
    """Generation settings of an evaluation.

    Attributes:
        max_new_tokens: greedy tokens per completion (64 by default, as in the paper's protocol).
        batch_size: sequences per generate call (big batches are much faster on CPU).
        first_phase: tokens every prompt gets before only unfinished sequences are continued.
        n_examples: truncated example completions kept per domain.
        stop_on_refusal: stop a sequence after the first phase when it already holds a refusal marker
            (the keyword judge's verdict cannot change; refusal rates are exact, refusals are cut short).
        stop_when_judged: also stop an answer once it is longer than the judge reads
            (:data:`palette_lens.refusal.judge.JUDGE_HORIZON` characters, about 45 tokens): refusal rates are exact,
            answers are cut there (reports truncate them anyway).
        use_drafts: evaluate another model (:meth:`Evaluator.evaluate_lm`) by checking the vanilla
            completions as drafts (:func:`generate_with_drafts`) on the prompts it is not meant to change,
            instead of generating token by token.
        verify_batch_size: sequences per teacher-forced checking pass.
        reuse_prefix: in that check, compute the layers below a variant's first changed layer once with
            the vanilla model and run only the rest per variant (:mod:`palette_lens.generation.shared_prefix`).

    Examples:
        >>> cfg = EvalConfig(max_new_tokens=32, stop_when_judged=False)
        >>> cfg.max_new_tokens, cfg.batch_size
        (32, 64)
    """

    max_new_tokens: int = 64
    batch_size: int = 64
    first_phase: int = 12
    n_examples: int = 3
    stop_on_refusal: bool = True
    stop_when_judged: bool = True
    use_drafts: bool = True
    verify_batch_size: int = 16
    reuse_prefix: bool = True


class Evaluator:
    """Evaluates model variants on one :class:`EvalSet`, computing vanilla generations once.

    Args:
        model: the base chat model (never modified).
        evalset: the prompts.
        config: generation settings.
        refusal_ids: refusal token set R for first-token scores (default: opener tokens of the tokenizer).
        cache: False, True (the user cache folder) or a folder: keep vanilla generations on disk, keyed by
            model, prompts and settings.

    ``vanilla()`` evaluates the unmodified model once; ``evaluate_lm`` a variant given as another HF model
    (e.g. a merged profile, optionally behind gate decisions ``opens``), ``evaluate_hooks`` one given as
    TransformerLens hooks, ``evaluate_routed`` one that changes only some prompts. Each returns a
    :class:`VariantResult`.

    Examples:
        >>> ev = Evaluator(model, EvalSet.build(prompts, limit=20))                       # doctest: +SKIP
        >>> ev.vanilla().refusal_rate()["cyber"]                                          # doctest: +SKIP
        0.95
        >>> result = ev.evaluate_lm("cyber", merged_profile(model, [adapter]), ["cyber"])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: ChatModel,
        evalset: EvalSet,
        config: EvalConfig = EvalConfig(),
        refusal_ids: Sequence[int] | None = None,
        cache: bool | str | Path = False,
    ) -> None:
        from palette_lens.models.copies import plain_hf_model

        self.cache = cache
        self.model = model
        self.evalset = evalset
        self.config = config
        self.refusal_ids = list(refusal_ids) if refusal_ids is not None else sorted(opener_tokens(model.tokenizer))
        self._plain = plain_hf_model(model)  # same weights, no TransformerLens wrappers: faster generation
        self._vanilla: VariantResult | None = None
        self._vanilla_lp: dict[int, torch.Tensor] = {}
        self._vanilla_gen: Generations | None = None
        self._prefix_cache: dict[int, PrefixStates] = {}

    def _cache_path(self, prompts: Sequence[str]) -> Path | None:
        """Where vanilla generations of these prompts and settings are cached (None: no cache)."""
        if not self.cache:
            return None
        folder = cache_root() / "generations" if self.cache is True else Path(self.cache)
        c = self.config
        digest = hashlib.sha256(json.dumps([
            CACHE_VERSION, self.model.cache_key, self.model.system_prompt, c.max_new_tokens, c.first_phase,
            c.stop_on_refusal, c.stop_when_judged, list(self.refusal_ids),
            # generations stopped early on the judge's verdict depend on the judge itself
            list(REFUSAL_MARKERS) if c.stop_on_refusal else None, MARKER_WINDOW if c.stop_on_refusal else None,
        ]).encode())
        for p in prompts:
            digest.update(p.encode() + b"\x00")
        return folder / f"{digest.hexdigest()[:24]}.safetensors"

    @property
    def plain_model(self) -> Any:
        """A plain HF copy of the base model sharing its weights (used for vanilla generation)."""
        return self._plain

    # ---- internals
    def _generate(self, prompts: list[str], doms: list[str], desc: str, **kw: Any) -> Generations:
        keep = [d == HARMLESS for d in doms]
        return generate_completions(
            self.model, prompts, max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size,
            first_phase=self.config.first_phase, refusal_ids=self.refusal_ids, keep_logprobs=keep, desc=desc,
            stop_on_refusal=self.config.stop_on_refusal, stop_when_judged=self.config.stop_when_judged, **kw,
        )

    def _result(
        self, name: str, kind: str, authorized: Sequence[str], gen: Generations, doms: list[str], prompts: list[str]
    ) -> VariantResult:
        texts: dict[str, list[str]] = {d: [] for d in self.evalset.domains}
        scores: dict[str, list[float]] = {d: [] for d in self.evalset.domains}
        grouped: dict[str, list[str]] = {d: [] for d in self.evalset.domains}
        for i, (p, d) in enumerate(zip(prompts, doms)):
            texts[d].append(gen.texts[i])
            grouped[d].append(p)
            scores[d].append(float(gen.first_scores[i]) if gen.first_scores is not None else 0.0)
        kl = 0.0
        if self._vanilla_lp and gen.first_logprobs:
            common = [i for i in gen.first_logprobs if i in self._vanilla_lp]
            if common:
                p = torch.stack([self._vanilla_lp[i] for i in common])
                q = torch.stack([gen.first_logprobs[i] for i in common])
                kl = float(first_token_kl(p, q).mean().clamp_min(0.0))
        return VariantResult(
            name, kind, tuple(authorized), grouped, texts, scores, kl, gen.seconds, sum(gen.n_tokens)
        )

    # ---- variants
    def vanilla(self) -> VariantResult:
        """The unmodified model (generated once, then cached; on disk too when ``cache`` is set)."""
        if self._vanilla is None:
            prompts, doms = self.evalset.flat()
            gen = None
            path = self._cache_path(prompts)
            if path is not None and path.is_file():
                gen = load_generations(path)
                if gen is not None and len(gen.texts) != len(prompts):
                    gen = None
                if gen is not None:
                    log.info("vanilla generations read from the cache %s", path)
            if gen is None:
                gen = self._generate(prompts, doms, "vanilla", lm=self._plain)
                if path is not None:
                    save_generations(path, gen)
            self._vanilla_gen = gen
            self._vanilla_lp = dict(gen.first_logprobs)
            self._vanilla = self._result("vanilla", "vanilla", (), gen, doms, prompts)
            self._vanilla.harmless_kl = 0.0
            log.info("vanilla: %d prompts, %d tokens in %.1fs", len(prompts), sum(gen.n_tokens), gen.seconds)
        return self._vanilla

    def evaluate_lm(
        self, name: str, lm: Any, authorized: Sequence[str], kind: str = "merged", opens: Sequence[bool] | None = None
    ) -> VariantResult:
        """A variant given as another HF model sharing the tokenizer (e.g. a merged profile).

        With ``config.use_drafts``, prompts outside ``authorized`` are evaluated by checking the vanilla
        completion as a draft (:func:`generate_with_drafts`); authorized-domain prompts are generated.
        With ``opens`` (per prompt in :meth:`EvalSet.flat` order, e.g. a :class:`palette_lens.gate.domain_gate.DomainGate`'s
        decisions) only the open prompts go to ``lm``; the others keep their vanilla completion.
        """
        self.vanilla()
        prompts, doms = self.evalset.flat()
        if opens is not None:
            if len(opens) != len(prompts):
                raise ValueError(f"{len(opens)} gate decisions for {len(prompts)} prompts")
            idx = [i for i, o in enumerate(opens) if o]
            t0 = time.perf_counter()
            parts = [(idx, self._generate([prompts[i] for i in idx], [doms[i] for i in idx], name, lm=lm))] if idx else []
            res = self._result(name, kind, authorized, self._spliced(parts, t0), doms, prompts)
            res.extra["gate_opened"] = self._share_by_domain(opens, doms)
            return res
        if self.config.use_drafts and self._vanilla_gen is not None and self._vanilla_gen.token_ids:
            auth = set(authorized)
            gen = generate_with_drafts(
                self.model, lm, prompts, self._vanilla_gen, generate=[d in auth for d in doms],
                max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size,
                first_phase=self.config.first_phase, verify_batch_size=self.config.verify_batch_size,
                refusal_ids=self.refusal_ids, keep_logprobs=[d == HARMLESS for d in doms], desc=name,
                stop_on_refusal=self.config.stop_on_refusal, stop_when_judged=self.config.stop_when_judged,
                prefix=self._prefix_states(lm, prompts),
            )
        else:
            gen = self._generate(prompts, doms, name, lm=lm)
        res = self._result(name, kind, authorized, gen, doms, prompts)
        res.extra["decoding"] = {k: gen.verified.count(k) for k in ("generated", "verified", "continued")}
        log.info("%s: %d tokens in %.1fs", name, res.n_generated, res.seconds)
        return res

    def _prefix_states(self, lm: Any, prompts: list[str]) -> PrefixStates | None:
        """Vanilla's hidden states entering ``lm``'s first changed layer, for prompt + vanilla draft.

        Computed once and reused by every variant that changes nothing below the layer it was taken at (a
        profile of single-block adapters at that block or later); None when the variant changes the first
        layer or reuse is switched off.
        """
        if not self.config.reuse_prefix or self._vanilla_gen is None:
            return None
        layer = min(first_changed_layer(self._plain, lm), self.model.n_layers - 1)  # the last layer at least
        if layer == 0:
            return None
        below = [k for k in self._prefix_cache if k <= layer]  # running a few unchanged layers more is exact
        if below:
            return self._prefix_cache[max(below)]
        if layer not in self._prefix_cache:
            n = self.config.max_new_tokens
            seqs = [ids + list(t[:n]) for ids, t in zip(encode_prompts(self.model, prompts), self._vanilla_gen.token_ids)]
            self._prefix_cache[layer] = capture_prefix_states(
                self._plain, seqs, layer, self.model.tokenizer.pad_token_id, self.config.verify_batch_size,
                desc=f"vanilla states at layer {layer}",
            )
            log.info("vanilla hidden states entering layer %d kept for %d sequences", layer, len(seqs))
        return self._prefix_cache[layer]

    def evaluate_hooks(self, name: str, hooks: Sequence[Hook], authorized: Sequence[str], kind: str = "hooks") -> VariantResult:
        """A variant given as TransformerLens hooks on the base model (e.g. global directional ablation)."""
        self.vanilla()
        prompts, doms = self.evalset.flat()
        gen = self._generate(prompts, doms, name, hooks=hooks)
        res = self._result(name, kind, authorized, gen, doms, prompts)
        log.info("%s: %d tokens in %.1fs", name, res.n_generated, res.seconds)
        return res

    def evaluate_routed(
        self,
        name: str,
        routes: Sequence[Hashable | None],
        hooks_for: Callable[[Hashable], Sequence[Hook]],
        authorized: Sequence[str],
        kind: str = "conditional",
    ) -> VariantResult:
        """A variant that changes only some prompts: per prompt (in :meth:`EvalSet.flat` order) a route.

        Prompts with route ``None`` keep their vanilla completion (the variant is the identity on them);
        the others are generated with ``hooks_for(route)``, grouped by route. This is how run-time
        conditional steering is evaluated: the condition is decided on the prompt, then the steering
        hooks apply to that sequence for the whole generation.
        """
        self.vanilla()
        prompts, doms = self.evalset.flat()
        assert self._vanilla_gen is not None
        if len(routes) != len(prompts):
            raise ValueError(f"{len(routes)} routes for {len(prompts)} prompts")
        t0 = time.perf_counter()
        parts = []
        for key in dict.fromkeys(r for r in routes if r is not None):
            idx = [i for i, r in enumerate(routes) if r == key]
            parts.append((idx, self._generate(
                [prompts[i] for i in idx], [doms[i] for i in idx], f"{name} [{key}]", hooks=hooks_for(key)
            )))
        res = self._result(name, kind, authorized, self._spliced(parts, t0), doms, prompts)
        res.extra["condition_fired"] = self._share_by_domain([r is not None for r in routes], doms)
        return res

    def _spliced(self, parts: Sequence[tuple[list[int], Generations]], t0: float) -> Generations:
        """Vanilla's generations with the rows ``idx`` of each ``(idx, generations)`` part replaced by that part's."""
        assert self._vanilla_gen is not None
        texts = list(self._vanilla_gen.texts)
        n_tok = list(self._vanilla_gen.n_tokens)
        scores = self._vanilla_gen.first_scores.clone() if self._vanilla_gen.first_scores is not None else None
        lps = dict(self._vanilla_lp)
        for idx, gen in parts:
            for j, i in enumerate(idx):
                texts[i], n_tok[i] = gen.texts[j], gen.n_tokens[j]
                if scores is not None and gen.first_scores is not None:
                    scores[i] = gen.first_scores[j]
                if j in gen.first_logprobs:
                    lps[i] = gen.first_logprobs[j]
        _, doms = self.evalset.flat()
        return Generations(texts, n_tok, scores, {i: lps[i] for i, d in enumerate(doms) if d == HARMLESS},
                           time.perf_counter() - t0)

    def _share_by_domain(self, flags: Sequence[bool], doms: Sequence[str]) -> dict[str, float]:
        """Per domain, the share of its prompts whose flag is set."""
        hit = {d: 0 for d in self.evalset.domains}
        total = {d: 0 for d in self.evalset.domains}
        for f, d in zip(flags, doms):
            hit[d] += bool(f)
            total[d] += 1
        return {d: hit[d] / max(1, total[d]) for d in hit}
