"""Greedy generation for evaluation: batched, two-phase, with first-token scores and a disk cache.

Generation is the expensive part on a CPU, so :func:`generate_completions` (a) sorts prompts by length and
uses big batches, (b) runs in two phases: every prompt gets ``first_phase`` tokens, and only the sequences
that have not ended (answers, not the short refusals) are continued to ``max_new_tokens``, so one long
answer does not keep a whole batch of finished refusals running, and (c) records the first answer token's
distribution during the same pass (no extra forward for first-token scores and KL).
:func:`generate_with_drafts` checks known completions (e.g. vanilla's) in one teacher-forced pass and only
generates where they differ; :func:`save_generations` / :func:`load_generations` keep them on disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .models import ChatModel, Hook
from .refusal import refusal_is_final, refusal_scores, verdict_is_final
from .shared_prefix import PrefixStates, run_from_layer

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


class _DecidedStop:
    """A stopping criterion: stops each row once ``decided`` holds for its decoded text (heads + new tokens).

    Records, per batch row, how many new tokens it had when it stopped (``stopped_at``); later tokens of that
    row are padding.
    """

    def __init__(self, tokenizer: Any, decided: Callable[[str], bool], prompt_width: int, heads: list[list[int]]):
        self.tokenizer, self.decided, self.width, self.heads = tokenizer, decided, prompt_width, heads
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        n_new = input_ids.shape[1] - self.width
        rows = input_ids[:, self.width :].tolist()
        for j, row in enumerate(rows):
            if j not in self.stopped_at and self.decided(
                self.tokenizer.decode(self.heads[j] + row, skip_special_tokens=True)
            ):
                self.stopped_at[j] = n_new
        return torch.tensor([j in self.stopped_at for j in range(len(rows))], device=input_ids.device)


@torch.no_grad()
def _generate_ids(
    model: ChatModel,
    lm: Any,
    seqs: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    record_first: bool,
    desc: str | None,
    decided: Callable[[str], bool] | None = None,
    heads: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[int]], list[bool], list[torch.Tensor | None]]:
    """Greedy continuation of token sequences, longest first, in batches (left padded).

    With ``decided``, a sequence stops as soon as ``decided(text)`` holds for its text so far (``heads[i]``
    + its new tokens); it then counts as not ended.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

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
        stopper = None
        if decided is not None:
            stopper = _DecidedStop(model.tokenizer, decided, enc["input_ids"].shape[1],
                                   [list(heads[i]) if heads else [] for i in idx])
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
            stopping_criteria=StoppingCriteriaList([stopper]) if stopper is not None else None,
        )
        gen = out[:, enc["input_ids"].shape[1] :].tolist()
        for j, i in enumerate(idx):
            cut = stopper.stopped_at.get(j) if stopper is not None else None
            new[i], done[i] = _trim(gen[j] if cut is None else gen[j][:cut], stop)
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
    stop_when_judged: bool = False,
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
        stop_when_judged: also stop an answer once it is longer than the keyword judge reads
            (:data:`palette_lens.refusal.JUDGE_HORIZON` characters): its verdict cannot change any more
            (:func:`palette_lens.refusal.verdict_is_final`); refusal rates are unchanged, answers are cut at
            about 45 tokens instead of ``max_new_tokens``.

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
            decided=_decider(stop_on_refusal, stop_when_judged),
        )
    return _package(model, new, ended, first, refusal_ids, keep_logprobs, t0)


def _decider(stop_on_refusal: bool, stop_when_judged: bool) -> Callable[[str], bool] | None:
    """When a sequence may stop early without changing the keyword judge's verdict (None: never)."""
    if stop_when_judged:
        return verdict_is_final
    return refusal_is_final if stop_on_refusal else None


def encode_prompts(model: ChatModel, prompts: Sequence[str]) -> list[list[int]]:
    """Rendered, tokenized prompts (no padding): one id list per prompt."""
    return model.tokenizer(model.render(list(prompts)), add_special_tokens=False)["input_ids"]


def _two_phase(
    model: ChatModel, lm: Any, seqs: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int,
    first_phase: int, record_first: bool, desc: str | None,
    decided: Callable[[str], bool] | None = None, heads: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[int]], list[bool], list[torch.Tensor | None]]:
    """Greedy continuation of ``seqs``: ``first_phase`` tokens for all, then the unfinished ones continued.

    With ``decided``, a sequence whose text so far (``heads[i]`` + its new tokens) is decided (its judge
    verdict can no longer change, :func:`_decider`) is not continued, and a continued one stops once it is.
    """
    phase1 = min(first_phase, max_new_tokens) if first_phase > 0 else max_new_tokens
    new, ended, first = _generate_ids(model, lm, seqs, phase1, batch_size, record_first, desc)
    todo = [i for i in range(len(seqs)) if not ended[i] and len(new[i]) >= phase1]
    so_far = [(list(heads[i]) if heads else []) + new[i] for i in range(len(seqs))]
    if decided is not None:
        tok = model.tokenizer
        todo = [i for i in todo if not decided(tok.decode(so_far[i], skip_special_tokens=True))]
    rest = max_new_tokens - phase1
    if todo and rest > 0:
        more, more_ended, _ = _generate_ids(
            model, lm, [list(seqs[i]) + new[i] for i in todo], rest, batch_size, False,
            f"{desc} (continued)" if desc else None, decided, [so_far[i] for i in todo],
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
    prefix: PrefixStates | None = None,
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
        prefix: hidden states entering decoder layer ``prefix.layer`` for each prompt + completion, from a
            model whose layers below it are ``lm``'s (:mod:`palette_lens.shared_prefix`); only the layers
            from there on are run.

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
        if prefix is not None:
            hidden = run_from_layer(lm, prefix.collate(idx, device), mask, prefix.layer)
        else:
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
    stop_when_judged: bool = False,
    prefix: PrefixStates | None = None,
) -> Generations:
    """``lm``'s greedy completions, using another model's completions of the same prompts as drafts.

    Each draft is checked with :func:`verify_greedy`; where ``lm`` agrees it is kept, where it first
    differs ``lm`` continues from its own token. A variant that leaves most prompts alone (a profile on
    non-authorized prompts, on harmless ones) thus costs about one prompt-processing pass per prompt
    instead of token-by-token decoding. The result equals :func:`generate_completions` with ``lm`` up to
    float rounding (teacher-forced and incremental logits differ in the last bits; a near-tie can flip).
    With ``stop_on_refusal`` / ``stop_when_judged`` the keyword judge's verdicts are the same, though a
    continued sequence may be cut at a different length; a draft that first differs only after the judge's
    verdict is decided is not continued at all.

    Args:
        drafts: completions of the same prompts by another model (e.g. vanilla), with ``token_ids`` and
            ``ended`` (produced by :func:`generate_completions` with ``max_new_tokens`` at least as large).
        generate: per prompt, True to skip the draft and generate directly (e.g. authorized-domain prompts,
            which a profile is meant to change).
        stop_on_refusal, stop_when_judged: as in :func:`generate_completions`; a draft that was cut once its
            verdict was decided and that ``lm`` reproduces gets the same verdict from ``lm``.
        prefix: per prompt, the hidden states entering a decoder layer for prompt + draft (truncated to
            ``max_new_tokens``), from a model equal to ``lm`` below that layer: the check then runs only
            the layers from there on (:func:`verify_greedy`).
        other arguments: as in :func:`generate_completions`.
    """
    t0 = time.perf_counter()
    prompts = list(prompts)
    n = len(prompts)
    if len(drafts.token_ids) != n:
        raise ValueError("drafts must hold token ids for every prompt")
    stop = set(model.stop_token_ids)
    ids = encode_prompts(model, prompts)
    decided = _decider(stop_on_refusal, stop_when_judged)
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
            prefix.subset(check) if prefix is not None else None,
        )
        for j, i in enumerate(check):
            first[i] = first_lp[j]
            draft = list(drafts.token_ids[i][:max_new_tokens])
            if diff[j] is None:
                new[i], ended[i], status[i] = draft, drafts.ended[i] and len(draft) == len(drafts.token_ids[i]), "verified"
                continue
            status[i] = "continued"
            agreed = draft[: diff[j]]
            if tok[j] in stop:
                new[i], ended[i] = agreed, True
            elif len(agreed) + 1 >= max_new_tokens or (
                decided is not None and decided(model.tokenizer.decode(agreed + [tok[j]], skip_special_tokens=True))
            ):
                new[i], ended[i] = agreed + [tok[j]], False
            else:
                cont.append((i, agreed + [tok[j]]))
    if direct:
        d_new, d_end, d_first = _two_phase(
            model, lm, [ids[i] for i in direct], max_new_tokens, batch_size, first_phase, True, desc, decided=decided,
        )
        for j, i in enumerate(direct):
            new[i], ended[i], first[i] = d_new[j], d_end[j], d_first[j]
    if cont:
        budget = max(max_new_tokens - len(p) for _, p in cont)
        c_new, c_end, _ = _two_phase(
            model, lm, [ids[i] + p for i, p in cont], budget, batch_size, first_phase, False,
            f"{desc} (after drafts)" if desc else None, decided=decided, heads=[p for _, p in cont],
        )
        for (i, p), extra, e in zip(cont, c_new, c_end):
            room = max_new_tokens - len(p)
            new[i], ended[i] = p + extra[:room], e and len(extra) <= room
    return _package(model, new, ended, first, refusal_ids, keep_logprobs, t0, status)


# ---------------------------------------------------------------------- disk cache of generations
_CACHE_VERSION = 2  # 2: sequences stop once the judge has decided (stop_when_judged)


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
