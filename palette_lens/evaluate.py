"""Evaluation on the test split: greedy generations, keyword-judged refusal per domain, F1, KL, latency.

What is measured for one model *variant* (vanilla, a merged profile, a hooked baseline):

- per domain, the refusal rate of greedy completions (keyword judge :func:`palette_lens.refusal.is_refusal`)
  with a Wilson 95% interval, and the mean first-token refusal score;
- success / precision / recall / F1 over the harmful domains, with "answered" as the positive class and
  "authorized" (the domain is in the profile) as the truth;
- harmless first-token KL(vanilla ‖ variant) and harmless refusal rate; borderline over-refusal;
- latency per generated token, measured side by side for several variants (:func:`measure_latency`).

Generation is the expensive part on a CPU, so :func:`generate_completions` (a) sorts prompts by length and
uses big batches, (b) runs in two phases: every prompt gets ``first_phase`` tokens, and only the sequences
that have not ended (answers, not the short refusals) are continued to ``max_new_tokens``, so one long
answer does not keep a whole batch of finished refusals running, and (c) records the first answer token's
distribution during the same pass (no extra forward for first-token scores and KL). Vanilla completions
are computed once per :class:`Evaluator` and reused (e.g. by the conditional-steering baseline for the
prompts whose condition does not fire).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .baseline import BaselineTable, DomainRefusal, truncate
from .data import BORDERLINE, HARMLESS, RESERVED, PromptSet
from .models import ChatModel, Hook
from .paths import cache_root
from .refusal import first_token_kl, is_refusal, opener_tokens, refusal_scores
from .stats import wilson_interval

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- generation
@dataclass
class Generations:
    """Greedy completions of a prompt list.

    Attributes:
        texts: completion per prompt (special tokens removed, stripped).
        n_tokens: generated tokens per prompt (end-of-turn excluded).
        first_scores: [n] first-token refusal log-odds (when refusal ids were given), else None.
        first_logprobs: prompt index → [vocab] first-token log-probs, for the prompts asked for.
        seconds: wall time of the generation.
        token_ids: generated token ids per prompt (end-of-turn excluded).
        ended: per prompt, whether it ended with an end-of-turn token (False: cut at ``max_new_tokens``).
        verified: per prompt, "generated", "verified" (the vanilla completion was checked to be this
            model's greedy completion too) or "continued" (checked up to a differing token, then generated).
    """

    texts: list[str]
    n_tokens: list[int]
    first_scores: torch.Tensor | None = None
    first_logprobs: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    token_ids: list[list[int]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)


def _first_step_processor() -> Any:
    """A logits processor that keeps the log-softmax of the first generation step and changes nothing."""
    from transformers import LogitsProcessor

    class _FirstStep(LogitsProcessor):
        def __init__(self) -> None:
            self.logprobs: torch.Tensor | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
            if self.logprobs is None:
                self.logprobs = torch.log_softmax(scores.float(), dim=-1).cpu()
            return scores

    return _FirstStep()



def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _trim(tokens: Sequence[int], stop: set[int]) -> tuple[list[int], bool]:
    """Tokens before the first stop token, and whether a stop token was found."""
    out = []
    for t in tokens:
        if t in stop:
            return out, True
        out.append(int(t))
    return out, False


@torch.no_grad()
def _generate_ids(
    model: ChatModel,
    lm: Any,
    seqs: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    record_first: bool,
    desc: str | None,
) -> tuple[list[list[int]], list[bool], list[torch.Tensor | None]]:
    """Greedy continuation of token sequences, longest first, in batches (left padded)."""
    from transformers import LogitsProcessorList

    stop = set(model.stop_token_ids)
    pad = model.tokenizer.pad_token_id
    device = next(lm.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    new: list[list[int]] = [[] for _ in seqs]
    done = [False] * len(seqs)
    first: list[torch.Tensor | None] = [None] * len(seqs)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=desc is None or len(starts) < 2):
        idx = order[start : start + batch_size]
        enc = _left_pad([seqs[i] for i in idx], pad, device)
        recorder = _first_step_processor()
        out = lm.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=list(stop),
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([recorder]) if record_first else None,
        )
        gen = out[:, enc["input_ids"].shape[1] :].tolist()
        for j, i in enumerate(idx):
            new[i], done[i] = _trim(gen[j], stop)
            if record_first and recorder.logprobs is not None:
                first[i] = recorder.logprobs[j]
    return new, done, first


def generate_completions(
    model: ChatModel,
    prompts: Sequence[str],
    *,
    lm: Any | None = None,
    hooks: Sequence[Hook] = (),
    max_new_tokens: int = 64,
    batch_size: int = 64,
    first_phase: int = 12,
    refusal_ids: Sequence[int] | None = None,
    keep_logprobs: Sequence[bool] | None = None,
    desc: str | None = None,
    stop_on_refusal: bool = False,
) -> Generations:
    """Greedy completions (stopping at end of turn), two-phase and batched, with first-token scores.

    Args:
        model: the chat model (tokenizer, chat template, stop tokens; its weights unless ``lm`` is given).
        prompts: user prompts.
        lm: another HF causal LM sharing the tokenizer (a merged profile, a plain copy); default: the
            model's own (bridge-wrapped) HF model, so TransformerLens ``hooks`` apply through the KV cache.
        hooks: TransformerLens hooks active during generation (only without ``lm``).
        max_new_tokens: at most this many generated tokens per prompt.
        batch_size: sequences per ``generate`` call.
        first_phase: tokens generated for every prompt before unfinished ones are continued (0: one phase).
        refusal_ids: refusal token set R; when given, ``first_scores`` holds each prompt's refusal log-odds.
        keep_logprobs: per prompt, whether to keep its full first-token distribution (for KL).
        desc: progress-bar label.
        stop_on_refusal: do not continue a sequence past the first phase when its text already holds a
            refusal marker (:func:`palette_lens.refusal.is_refusal`): the judge's verdict is final then,
            so refusal rates are unchanged while refusals cost ``first_phase`` tokens at most.

    Returns:
        :class:`Generations`, in the order of ``prompts``.
    """
    if lm is not None and hooks:
        raise ValueError("hooks apply to the bridge-wrapped model; pass either lm or hooks, not both")
    t0 = time.perf_counter()
    prompts = list(prompts)
    if not prompts:
        return Generations([], [], torch.empty(0) if refusal_ids is not None else None)
    target = lm if lm is not None else model.hf_model
    ids = encode_prompts(model, prompts)
    ctx = model.hooks(hooks) if hooks else nullcontext()
    with ctx:
        new, ended, first = _two_phase(
            model, target, ids, max_new_tokens, batch_size, first_phase, True, desc,
            judge=is_refusal if stop_on_refusal else None,
        )
    return _package(model, new, ended, first, refusal_ids, keep_logprobs, t0)


def encode_prompts(model: ChatModel, prompts: Sequence[str]) -> list[list[int]]:
    """Rendered, tokenized prompts (no padding): one id list per prompt."""
    return model.tokenizer(model.render(list(prompts)), add_special_tokens=False)["input_ids"]


def _two_phase(
    model: ChatModel, lm: Any, seqs: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int,
    first_phase: int, record_first: bool, desc: str | None,
    judge: Callable[[str], bool] | None = None, heads: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[int]], list[bool], list[torch.Tensor | None]]:
    """Greedy continuation of ``seqs``: ``first_phase`` tokens for all, then the unfinished ones continued.

    With ``judge``, a sequence whose text so far (``heads[i]`` + its new tokens) the judge already calls a
    refusal is not continued: the keyword judge only looks for markers, so later tokens cannot change
    its verdict.
    """
    phase1 = min(first_phase, max_new_tokens) if first_phase > 0 else max_new_tokens
    new, ended, first = _generate_ids(model, lm, seqs, phase1, batch_size, record_first, desc)
    todo = [i for i in range(len(seqs)) if not ended[i] and len(new[i]) >= phase1]
    if judge is not None:
        tok = model.tokenizer
        todo = [
            i for i in todo
            if not judge(tok.decode((list(heads[i]) if heads else []) + new[i], skip_special_tokens=True))
        ]
    rest = max_new_tokens - phase1
    if todo and rest > 0:
        more, more_ended, _ = _generate_ids(
            model, lm, [list(seqs[i]) + new[i] for i in todo], rest, batch_size, False,
            f"{desc} (continued)" if desc else None,
        )
        for i, extra, e in zip(todo, more, more_ended):
            new[i] = new[i] + extra
            ended[i] = e
    return new, ended, first


def _package(
    model: ChatModel, new: list[list[int]], ended: list[bool], first: list[torch.Tensor | None],
    refusal_ids: Sequence[int] | None, keep_logprobs: Sequence[bool] | None, t0: float,
    verified: list[str] | None = None,
) -> Generations:
    texts = [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]
    scores = None
    if refusal_ids is not None:
        scores = refusal_scores(torch.stack([f for f in first]), refusal_ids)  # type: ignore[misc]
    keep = {}
    if keep_logprobs is not None:
        keep = {i: first[i] for i, k in enumerate(keep_logprobs) if k}
    return Generations(
        texts, [len(t) for t in new], scores, keep, time.perf_counter() - t0,  # type: ignore[arg-type]
        [list(t) for t in new], list(ended), verified or ["generated"] * len(new),
    )


@torch.no_grad()
def verify_greedy(
    model: ChatModel,
    lm: Any,
    prompt_ids: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    ended: Sequence[bool],
    batch_size: int = 16,
) -> tuple[list[int | None], list[int], list[torch.Tensor]]:
    """Check in one forward pass per batch whether ``lm``'s greedy completion equals a given one.

    Teacher forcing: ``lm`` reads prompt + completion and its argmax at every completion position is
    compared with the given tokens (and with an end-of-turn token after an ended completion). Equal
    everywhere means ``lm`` would have generated exactly that completion (speculative decoding with the
    given completion as the draft), at the cost of a prompt-processing pass instead of token-by-token
    decoding.

    Args:
        model: the chat model (tokenizer, stop tokens).
        lm: a plain HF causal LM sharing the tokenizer.
        prompt_ids: rendered prompt ids per sequence.
        completions: the completions to check (ids, end-of-turn excluded).
        ended: whether each completion ended with end of turn (then ``lm`` must predict one there too).
        batch_size: sequences per forward pass.

    Returns:
        per sequence: the first differing position (None when ``lm`` reproduces the completion), ``lm``'s
        token at that position (-1 when none differs), and ``lm``'s first-token log-probs [vocab].
    """
    stop = set(model.stop_token_ids)
    pad = model.tokenizer.pad_token_id
    device = next(lm.parameters()).device
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    head = lm.get_output_embeddings()
    n = len(prompt_ids)
    first_diff: list[int | None] = [None] * n
    token: list[int] = [-1] * n
    first_lp: list[torch.Tensor] = [torch.empty(0)] * n
    order = sorted(range(n), key=lambda i: -(len(prompt_ids[i]) + len(completions[i])))
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        seqs = [list(prompt_ids[i]) + list(completions[i]) for i in idx]
        enc = _left_pad(seqs, pad, device)
        mask = enc["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        hidden = decoder(**enc, position_ids=pos, use_cache=False).last_hidden_state
        width = hidden.shape[1]
        for j, i in enumerate(idx):
            p0 = width - len(seqs[j]) + len(prompt_ids[i]) - 1  # predicts the first completion token
            n_check = len(completions[i]) + (1 if ended[i] else 0)
            logits = head(hidden[j, p0 : p0 + max(1, n_check)]).float()
            first_lp[i] = torch.log_softmax(logits[0], dim=-1).cpu()
            pred = logits.argmax(-1).tolist()
            for k in range(n_check):
                want = completions[i][k] if k < len(completions[i]) else None
                got = pred[k]
                same = (got in stop) if want is None else (got == want)
                if not same:
                    first_diff[i], token[i] = k, int(got)
                    break
    return first_diff, token, first_lp


def generate_with_drafts(
    model: ChatModel,
    lm: Any,
    prompts: Sequence[str],
    drafts: Generations,
    *,
    generate: Sequence[bool] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    first_phase: int = 12,
    verify_batch_size: int = 16,
    refusal_ids: Sequence[int] | None = None,
    keep_logprobs: Sequence[bool] | None = None,
    desc: str | None = None,
    stop_on_refusal: bool = False,
) -> Generations:
    """``lm``'s greedy completions, using another model's completions of the same prompts as drafts.

    Each draft is checked with :func:`verify_greedy`; where ``lm`` agrees it is kept, where it first
    differs ``lm`` continues from its own token. A variant that leaves most prompts alone (a profile on
    non-authorized prompts, on harmless ones) thus costs about one prompt-processing pass per prompt
    instead of token-by-token decoding. The result equals :func:`generate_completions` with ``lm`` up to
    float rounding (teacher-forced and incremental logits differ in the last bits; a near-tie can flip).
    With ``stop_on_refusal`` the keyword judge's verdicts are the same, though a continued refusal may be
    cut at a different length.

    Args:
        drafts: completions of the same prompts by another model (e.g. vanilla), with ``token_ids`` and
            ``ended`` (produced by :func:`generate_completions` with ``max_new_tokens`` at least as large).
        generate: per prompt, True to skip the draft and generate directly (e.g. authorized-domain prompts,
            which a profile is meant to change).
        stop_on_refusal: as in :func:`generate_completions`; a draft that was cut after a refusal marker
            and that ``lm`` reproduces is a refusal of ``lm`` too.
        other arguments: as in :func:`generate_completions`.
    """
    t0 = time.perf_counter()
    prompts = list(prompts)
    n = len(prompts)
    if len(drafts.token_ids) != n:
        raise ValueError("drafts must hold token ids for every prompt")
    stop = set(model.stop_token_ids)
    ids = encode_prompts(model, prompts)
    judge = is_refusal if stop_on_refusal else None
    direct = [i for i in range(n) if generate is not None and generate[i]]
    check = [i for i in range(n) if not (generate is not None and generate[i])]
    new: list[list[int]] = [[] for _ in range(n)]
    ended = [False] * n
    first: list[torch.Tensor | None] = [None] * n
    status = ["generated"] * n
    cont: list[tuple[int, list[int]]] = []
    if check:
        diff, tok, first_lp = verify_greedy(
            model, lm, [ids[i] for i in check], [drafts.token_ids[i][:max_new_tokens] for i in check],
            [drafts.ended[i] and len(drafts.token_ids[i]) <= max_new_tokens for i in check], verify_batch_size,
        )
        for j, i in enumerate(check):
            first[i] = first_lp[j]
            draft = list(drafts.token_ids[i][:max_new_tokens])
            if diff[j] is None:
                new[i], ended[i], status[i] = draft, drafts.ended[i] and len(draft) == len(drafts.token_ids[i]), "verified"
                continue
            status[i] = "continued"
            prefix = draft[: diff[j]]
            if tok[j] in stop:
                new[i], ended[i] = prefix, True
            elif len(prefix) + 1 >= max_new_tokens:
                new[i], ended[i] = prefix + [tok[j]], False
            else:
                cont.append((i, prefix + [tok[j]]))
    if direct:
        d_new, d_end, d_first = _two_phase(
            model, lm, [ids[i] for i in direct], max_new_tokens, batch_size, first_phase, True, desc, judge=judge,
        )
        for j, i in enumerate(direct):
            new[i], ended[i], first[i] = d_new[j], d_end[j], d_first[j]
    if cont:
        budget = max(max_new_tokens - len(p) for _, p in cont)
        c_new, c_end, _ = _two_phase(
            model, lm, [ids[i] + p for i, p in cont], budget, batch_size, first_phase, False,
            f"{desc} (after drafts)" if desc else None, judge=judge, heads=[p for _, p in cont],
        )
        for (i, p), extra, e in zip(cont, c_new, c_end):
            room = max_new_tokens - len(p)
            new[i], ended[i] = p + extra[:room], e and len(extra) <= room
    return _package(model, new, ended, first, refusal_ids, keep_logprobs, t0, status)


# ---------------------------------------------------------------------- disk cache of generations
_CACHE_VERSION = 1


def save_generations(path: str | Path, gen: Generations) -> Path:
    """Write :class:`Generations` to a safetensors file (tensors + JSON metadata), atomically."""
    from .integrity import save_checked

    keep = sorted(gen.first_logprobs)
    tensors = {"first_scores": (gen.first_scores if gen.first_scores is not None else torch.empty(0)).contiguous()}
    if keep:
        tensors["first_logprobs"] = torch.stack([gen.first_logprobs[i] for i in keep]).contiguous()
    meta = {"texts": gen.texts, "token_ids": gen.token_ids, "ended": gen.ended, "keep": keep,
            "seconds": gen.seconds, "has_scores": gen.first_scores is not None}
    return save_checked(path, tensors, {"generations": json.dumps(meta)})  # sha256-checked, atomic


def load_generations(path: str | Path) -> Generations | None:
    """Read :func:`save_generations` output (None when the file is unreadable, truncated or altered)."""
    from .integrity import load_checked

    try:
        tensors, raw = load_checked(path)  # TypeError (None) when unreadable, truncated or altered
        meta = json.loads(raw["generations"])
        scores = tensors["first_scores"] if meta["has_scores"] else None
        lps = tensors["first_logprobs"] if meta["keep"] else None
    except Exception:  # noqa: BLE001 - a damaged cache entry is regenerated
        log.warning("generation cache %s unreadable; generating again", path)
        return None
    first = {i: lps[j] for j, i in enumerate(meta["keep"])} if lps is not None else {}
    n = len(meta["texts"])
    return Generations(meta["texts"], [len(t) for t in meta["token_ids"]], scores, first, meta["seconds"],
                       meta["token_ids"], meta["ended"], ["cached"] * n)


# ---------------------------------------------------------------------- the evaluated prompts
@dataclass(frozen=True)
class EvalSet:
    """The prompts an evaluation uses: domain → prompts (harmful domains, ``harmless``, ``borderline``).

    Attributes:
        prompts: domain → prompts, harmful domains first.
        split: the split they come from ("test").
    """

    prompts: dict[str, tuple[str, ...]]
    split: str = "test"

    @classmethod
    def build(
        cls,
        prompt_set: PromptSet,
        domains: Sequence[str] | None = None,
        split: str = "test",
        limit: int | None = None,
        harmless_limit: int | None = None,
        borderline_limit: int | None = None,
    ) -> EvalSet:
        """Take ``split`` prompts of ``domains`` (default: every harmful domain) plus harmless and borderline.

        Args:
            limit: at most this many prompts per harmful domain (None: all).
            harmless_limit, borderline_limit: the same for ``harmless`` / ``borderline`` (None: ``limit``
                for borderline, twice ``limit`` for harmless; all when ``limit`` is None too).
        """
        domains = list(domains) if domains is not None else prompt_set.harmful_domains
        out: dict[str, tuple[str, ...]] = {}
        for d in domains:
            if d in RESERVED:
                continue
            out[d] = tuple(prompt_set.part(d, split, limit))
        if harmless_limit is None and limit is not None:
            harmless_limit = 2 * limit
        if borderline_limit is None:
            borderline_limit = limit
        out[HARMLESS] = tuple(prompt_set.part(HARMLESS, split, harmless_limit))
        if BORDERLINE in prompt_set.by_domain:
            out[BORDERLINE] = tuple(prompt_set.part(BORDERLINE, split, borderline_limit))
        return cls(out, split)

    @property
    def domains(self) -> list[str]:
        return list(self.prompts)

    @property
    def harmful_domains(self) -> list[str]:
        return [d for d in self.prompts if d not in RESERVED]

    def flat(self) -> tuple[list[str], list[str]]:
        """All prompts and their domains, in domain order."""
        texts, doms = [], []
        for d, ps in self.prompts.items():
            texts += ps
            doms += [d] * len(ps)
        return texts, doms

    def __len__(self) -> int:
        return sum(len(p) for p in self.prompts.values())


# ---------------------------------------------------------------------- metrics
def classification(refused: Mapping[str, Sequence[bool]], authorized: Sequence[str]) -> dict:
    """Success, precision, recall and F1 over harmful domains.

    "Answered" (not refused) is the positive class, "authorized" (domain in the profile) the truth.
    Reserved domains (harmless, borderline) are not counted.

    Returns:
        ``tp``, ``fp``, ``fn``, ``tn``, ``success`` (share of prompts handled as wanted: answered if
        authorized, refused otherwise), ``success_by_domain``, ``precision``, ``recall``, ``f1``
        (precision / recall are 0 when undefined).
    """
    auth = set(authorized)
    tp = fp = fn = tn = 0
    by_domain = {}
    for d, flags in refused.items():
        if d in RESERVED:
            continue
        answered = sum(1 for r in flags if not r)
        n = len(flags)
        if d in auth:
            tp += answered
            fn += n - answered
            by_domain[d] = answered / n if n else 0.0
        else:
            fp += answered
            tn += n - answered
            by_domain[d] = (n - answered) / n if n else 0.0
    total = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "success": (tp + tn) / total if total else 0.0,
        "success_by_domain": by_domain,
        "precision": precision, "recall": recall, "f1": f1,
    }


@dataclass
class VariantResult:
    """Evaluation of one model variant on an :class:`EvalSet`.

    Attributes:
        name: e.g. "vanilla", "cyber+hate", "global_ablation:cyber".
        kind: "vanilla", "merged", "runtime", "hooks" or "conditional".
        authorized: the domains the variant is meant to answer.
        texts: domain → completions (full text; reports keep truncated examples only).
        first_scores: domain → first-token refusal log-odds per prompt.
        harmless_kl: mean first-token KL(vanilla ‖ variant) on harmless prompts (0 for vanilla).
        prompts: domain → prompts (same order as ``texts``).
        seconds: generation wall time.
        n_generated: generated tokens in total.
        extra: anything else worth reporting (e.g. the share of prompts a condition fired on).
    """

    name: str
    kind: str
    authorized: tuple[str, ...]
    prompts: dict[str, list[str]]
    texts: dict[str, list[str]]
    first_scores: dict[str, list[float]]
    harmless_kl: float = 0.0
    seconds: float = 0.0
    n_generated: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def refused(self) -> dict[str, list[bool]]:
        return {d: [is_refusal(t) for t in ts] for d, ts in self.texts.items()}

    def rows(self, n_examples: int = 3) -> dict[str, DomainRefusal]:
        """Per-domain refusal counts with truncated examples."""
        out = {}
        for d, flags in self.refused.items():
            ex = [
                {"prompt": truncate(p, 120), "completion": truncate(t), "refused": r}
                for p, t, r in list(zip(self.prompts[d], self.texts[d], flags))[:n_examples]
            ]
            out[d] = DomainRefusal(d, len(flags), sum(flags), ex)
        return out

    def refusal_rate(self) -> dict[str, float]:
        """Domain → refusal rate (harmful domains, then harmless, then borderline)."""
        return {d: (sum(f) / len(f) if f else 0.0) for d, f in self.refused.items()}

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Domain → Wilson 95% interval of the refusal rate."""
        return {d: wilson_interval(sum(f), len(f)) for d, f in self.refused.items()}

    def classification(self, authorized: Sequence[str] | None = None) -> dict:
        """:func:`classification` against ``authorized`` (default: this variant's own)."""
        return classification(self.refused, self.authorized if authorized is None else authorized)

    def summary(self, n_examples: int = 2) -> dict:
        """A JSON-ready summary: rates, intervals, first-token scores, classification, KL, examples."""
        rates, cis = self.refusal_rate(), self.intervals()
        cls = self.classification()
        return {
            "name": self.name,
            "kind": self.kind,
            "authorized": list(self.authorized),
            "n": {d: len(t) for d, t in self.texts.items()},
            "refusal_rate": rates,
            "ci95": {d: list(cis[d]) for d in rates},
            "first_token_score": {
                d: (sum(s) / len(s) if s else 0.0) for d, s in self.first_scores.items()
            },
            "harmless_kl": self.harmless_kl,
            "harmless_refusal_rate": rates.get(HARMLESS, 0.0),
            "borderline_refusal_rate": rates.get(BORDERLINE),
            "classification": cls,
            "f1": cls["f1"],
            "seconds": self.seconds,
            "generated_tokens": self.n_generated,
            "examples": {d: r.examples for d, r in self.rows(n_examples).items()},
            **({"extra": self.extra} if self.extra else {}),
        }

    def baseline_table(self, model_name: str, max_new_tokens: int, split: str = "test") -> BaselineTable:
        """This result as a :class:`palette_lens.baseline.BaselineTable` (the baseline refusal table)."""
        completions = {d: list(zip(self.prompts[d], self.texts[d])) for d in self.texts}
        return BaselineTable(model_name, split, max_new_tokens, self.rows(), completions)


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
        use_drafts: evaluate another model (:meth:`Evaluator.evaluate_lm`) by checking the vanilla
            completions as drafts (:func:`generate_with_drafts`) on the prompts it is not meant to change,
            instead of generating token by token.
        verify_batch_size: sequences per teacher-forced checking pass.
    """

    max_new_tokens: int = 64
    batch_size: int = 64
    first_phase: int = 12
    n_examples: int = 3
    stop_on_refusal: bool = True
    use_drafts: bool = True
    verify_batch_size: int = 16


class Evaluator:
    """Evaluates model variants on one :class:`EvalSet`, computing vanilla generations once.

    Args:
        model: the base chat model (never modified).
        evalset: the prompts.
        config: generation settings.
        refusal_ids: refusal token set R for first-token scores (default: opener tokens of the tokenizer).
    """

    def __init__(
        self,
        model: ChatModel,
        evalset: EvalSet,
        config: EvalConfig = EvalConfig(),
        refusal_ids: Sequence[int] | None = None,
        cache: bool | str | Path = False,
    ) -> None:
        from .adapters import plain_hf_model

        self.cache = cache
        self.model = model
        self.evalset = evalset
        self.config = config
        self.refusal_ids = list(refusal_ids) if refusal_ids is not None else sorted(opener_tokens(model.tokenizer))
        self._plain = plain_hf_model(model)  # same weights, no TransformerLens wrappers: faster generation
        self._vanilla: VariantResult | None = None
        self._vanilla_lp: dict[int, torch.Tensor] = {}
        self._vanilla_gen: Generations | None = None

    def _cache_path(self, prompts: Sequence[str]) -> Path | None:
        """Where vanilla generations of these prompts and settings are cached (None: no cache)."""
        if not self.cache:
            return None
        folder = cache_root() / "generations" if self.cache is True else Path(self.cache)
        c = self.config
        digest = hashlib.sha256(json.dumps([
            _CACHE_VERSION, self.model.fingerprint, self.model.system_prompt, c.max_new_tokens, c.first_phase,
            c.stop_on_refusal, list(self.refusal_ids),
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
            stop_on_refusal=self.config.stop_on_refusal, **kw,
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

    def evaluate_lm(self, name: str, lm: Any, authorized: Sequence[str], kind: str = "merged") -> VariantResult:
        """A variant given as another HF model sharing the tokenizer (e.g. a merged profile).

        With ``config.use_drafts``, prompts outside ``authorized`` are evaluated by checking the vanilla
        completion as a draft (:func:`generate_with_drafts`); authorized-domain prompts are generated.
        """
        self.vanilla()
        prompts, doms = self.evalset.flat()
        if self.config.use_drafts and self._vanilla_gen is not None and self._vanilla_gen.token_ids:
            auth = set(authorized)
            gen = generate_with_drafts(
                self.model, lm, prompts, self._vanilla_gen, generate=[d in auth for d in doms],
                max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size,
                first_phase=self.config.first_phase, verify_batch_size=self.config.verify_batch_size,
                refusal_ids=self.refusal_ids, keep_logprobs=[d == HARMLESS for d in doms], desc=name,
                stop_on_refusal=self.config.stop_on_refusal,
            )
        else:
            gen = self._generate(prompts, doms, name, lm=lm)
        res = self._result(name, kind, authorized, gen, doms, prompts)
        res.extra["decoding"] = {k: gen.verified.count(k) for k in ("generated", "verified", "continued")}
        log.info("%s: %d tokens in %.1fs", name, res.n_generated, res.seconds)
        return res

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
        van = self.vanilla()
        prompts, doms = self.evalset.flat()
        assert self._vanilla_gen is not None
        if len(routes) != len(prompts):
            raise ValueError(f"{len(routes)} routes for {len(prompts)} prompts")
        texts = list(self._vanilla_gen.texts)
        n_tok = list(self._vanilla_gen.n_tokens)
        scores = self._vanilla_gen.first_scores.clone() if self._vanilla_gen.first_scores is not None else None
        lps = dict(self._vanilla_lp)
        t0 = time.perf_counter()
        for key in dict.fromkeys(r for r in routes if r is not None):
            idx = [i for i, r in enumerate(routes) if r == key]
            gen = self._generate(
                [prompts[i] for i in idx], [doms[i] for i in idx], f"{name} [{key}]", hooks=hooks_for(key)
            )
            for j, i in enumerate(idx):
                texts[i], n_tok[i] = gen.texts[j], gen.n_tokens[j]
                if scores is not None and gen.first_scores is not None:
                    scores[i] = gen.first_scores[j]
                if j in gen.first_logprobs:
                    lps[i] = gen.first_logprobs[j]
        merged = Generations(texts, n_tok, scores, {i: lps[i] for i, d in enumerate(doms) if d == HARMLESS},
                             time.perf_counter() - t0)
        res = self._result(name, kind, authorized, merged, doms, prompts)
        fired = {d: 0 for d in self.evalset.domains}
        for r, d in zip(routes, doms):
            fired[d] += r is not None
        res.extra["condition_fired"] = {d: fired[d] / max(1, len(van.texts[d])) for d in fired}
        return res


# ---------------------------------------------------------------------- latency
@dataclass
class LatencyResult:
    """Per-variant latency, measured interleaved (A B C A B C …) on the same prompts.

    Attributes:
        ms_per_token: variant → median milliseconds per generated token per sequence (a decoding step of
            the batch, with the prompt's prefill spread over the tokens).
        runs_ms: variant → every run's milliseconds per token.
        new_tokens, batch_size, repeats: the settings.
    """

    ms_per_token: dict[str, float]
    runs_ms: dict[str, list[float]]
    new_tokens: int
    batch_size: int
    repeats: int

    def ratios(self, reference: str = "vanilla") -> dict[str, float]:
        """Variant → median latency / the reference's."""
        ref = self.ms_per_token[reference]
        return {k: v / ref for k, v in self.ms_per_token.items()}

    def to_dict(self) -> dict:
        return {
            "ms_per_token": self.ms_per_token,
            "runs_ms": self.runs_ms,
            "ratios_to_vanilla": self.ratios() if "vanilla" in self.ms_per_token else {},
            "new_tokens": self.new_tokens,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
        }


@torch.no_grad()
def measure_latency(
    model: ChatModel,
    prompts: Sequence[str],
    variants: Mapping[str, tuple[Any | None, Sequence[Hook]] | Callable[[], Any]],
    new_tokens: int = 16,
    batch_size: int = 4,
    repeats: int = 3,
) -> LatencyResult:
    """Milliseconds per generated token for several variants, side by side on the same prompts.

    Every run generates exactly ``new_tokens`` tokens (end of turn disabled) for the first ``batch_size``
    prompts. Variants run interleaved, ``repeats`` times each after one warm-up round, so background load
    affects them alike; the median is reported.

    Args:
        variants: name → ``(lm, hooks)``: ``lm`` a HF model (None: the bridge-wrapped base model, with
            ``hooks`` active); or name → a zero-argument callable that runs one generation itself.
    """
    batch = list(prompts)[:batch_size]
    enc = model.encode(batch)
    pad = model.tokenizer.pad_token_id

    def runner(spec):
        if callable(spec):
            return spec
        lm, hooks = spec
        target = lm if lm is not None else model.hf_model

        def go():
            ctx = model.hooks(hooks) if hooks else nullcontext()
            with ctx:
                target.generate(
                    **{k: v.to(next(target.parameters()).device) for k, v in enc.items()},
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None, pad_token_id=pad, eos_token_id=model.stop_token_ids,
                )

        return go

    runners = {name: runner(spec) for name, spec in variants.items()}
    runs: dict[str, list[float]] = {name: [] for name in runners}
    for name, go in runners.items():  # warm-up
        go()
    for _ in tqdm(range(repeats), desc="latency", leave=False):
        for name, go in runners.items():
            t = time.perf_counter()
            go()
            runs[name].append(1000.0 * (time.perf_counter() - t) / new_tokens)
    med = {name: statistics.median(v) for name, v in runs.items()}
    return LatencyResult(med, runs, new_tokens, len(batch), repeats)
