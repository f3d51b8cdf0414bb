"""Greedy generation for evaluation: batched, two-phase, with first-token scores and a disk cache.

Generation is the expensive part on a CPU, so :func:`generate_completions` (a) sorts prompts by length and
uses big batches, (b) runs in two phases: every prompt gets ``first_phase`` tokens, and only the sequences
that have not ended (answers, not the short refusals) are continued to ``max_new_tokens``, so one long
answer does not keep a whole batch of finished refusals running, and (c) records the first answer token's
distribution during the same pass (no extra forward for first-token scores and KL).
:mod:`palette_lens.generation.drafts` checks known completions (e.g. vanilla's) in one teacher-forced pass and only
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

from palette_lens.models.chat_model import ChatModel, Hook
from palette_lens.refusal.judge import refusal_is_final, verdict_is_final
from palette_lens.refusal.tokens import refusal_scores

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
            model's greedy completion too), "continued" (checked up to a differing token, then generated)
            or "cached" (read back by :func:`load_generations`).

    Examples:
        >>> gen = Generations(texts=["I can't help with that.", "Sure!"], n_tokens=[7, 2])
        >>> gen.first_scores is None, gen.n_tokens
        (True, [7, 2])
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



def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
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
        enc = left_pad([seqs[i] for i in idx], pad, device)
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
    stop_when: Callable[[str], bool] | None = None,
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
            refusal marker (:func:`palette_lens.refusal.judge.is_refusal`): the judge's verdict is final then,
            so refusal rates are unchanged while refusals cost ``first_phase`` tokens at most.
        stop_when_judged: also stop an answer once it is longer than the keyword judge reads
            (:data:`palette_lens.refusal.judge.JUDGE_HORIZON` characters): its verdict cannot change any more
            (:func:`palette_lens.refusal.judge.verdict_is_final`); refusal rates are unchanged, answers are cut at
            about 45 tokens instead of ``max_new_tokens``.
        stop_when: a sequence stops (in either phase) once this holds for its decoded text so far, for a caller
            that reads only part of an answer (the utility benchmark stops at the end of the first code block);
            the tokens up to there are the same as without it.

    Returns:
        :class:`Generations`, in the order of ``prompts``; ``first_scores`` is [n_prompts] (float32) when
        ``refusal_ids`` is given, and each kept ``first_logprobs`` entry is [vocab].

    Raises:
        ValueError: both ``lm`` and ``hooks`` are given.

    Examples:
        >>> gen = generate_completions(model, ["Write a haiku."], max_new_tokens=32)     # doctest: +SKIP
        >>> gen.texts[0], gen.ended[0]                                                  # doctest: +SKIP
        ('Autumn moonlight— ...', True)
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
        new, ended, first = generate_two_phase(
            model, target, ids, max_new_tokens, batch_size, first_phase, True, desc,
            decided=stop_decider(stop_on_refusal, stop_when_judged), stop_when=stop_when,
        )
    return package_generations(model, new, ended, first, refusal_ids, keep_logprobs, t0)


def stop_decider(stop_on_refusal: bool, stop_when_judged: bool) -> Callable[[str], bool] | None:
    """When a sequence may stop early without changing the keyword judge's verdict (None: never)."""
    if stop_when_judged:
        return verdict_is_final
    return refusal_is_final if stop_on_refusal else None


def either(*deciders: Callable[[str], bool] | None) -> Callable[[str], bool] | None:
    """A decider that holds when any of ``deciders`` (None ones skipped) holds; None when there is none.

    Examples:
        >>> either(None, None) is None
        True
        >>> either(None, str.isupper)("ABC"), either(str.isdigit, str.isupper)("abc")
        (True, False)
    """
    active = [d for d in deciders if d is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda text: any(d(text) for d in active)


def encode_prompts(model: ChatModel, prompts: Sequence[str]) -> list[list[int]]:
    """Rendered, tokenized prompts (no padding): one id list per prompt."""
    return model.tokenizer(model.render(list(prompts)), add_special_tokens=False)["input_ids"]


def generate_two_phase(
    model: ChatModel, lm: Any, seqs: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int,
    first_phase: int, record_first: bool, desc: str | None,
    decided: Callable[[str], bool] | None = None, heads: Sequence[Sequence[int]] | None = None,
    stop_when: Callable[[str], bool] | None = None,
) -> tuple[list[list[int]], list[bool], list[torch.Tensor | None]]:
    """Greedy continuation of ``seqs``: ``first_phase`` tokens for all, then the unfinished ones continued.

    With ``decided``, a sequence whose text so far (``heads[i]`` + its new tokens) is decided (its judge
    verdict can no longer change, :func:`stop_decider`) is not continued, and a continued one stops once it is.
    ``stop_when`` acts the same way but also stops a sequence during the first phase.
    """
    phase1 = min(first_phase, max_new_tokens) if first_phase > 0 else max_new_tokens
    new, ended, first = _generate_ids(model, lm, seqs, phase1, batch_size, record_first, desc, stop_when, heads)
    decided = either(decided, stop_when)
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


def package_generations(
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


# ---------------------------------------------------------------------- disk cache of generations
CACHE_VERSION = 2  # 2: sequences stop once the judge has decided (stop_when_judged)


def save_generations(path: str | Path, gen: Generations) -> Path:
    """Write :class:`Generations` to a safetensors file (tensors + JSON metadata), atomically."""
    from palette_lens.util.integrity import save_checked

    keep = sorted(gen.first_logprobs)
    tensors = {"first_scores": (gen.first_scores if gen.first_scores is not None else torch.empty(0)).contiguous()}
    if keep:
        tensors["first_logprobs"] = torch.stack([gen.first_logprobs[i] for i in keep]).contiguous()
    meta = {"texts": gen.texts, "token_ids": gen.token_ids, "ended": gen.ended, "keep": keep,
            "seconds": gen.seconds, "has_scores": gen.first_scores is not None}
    return save_checked(path, tensors, {"generations": json.dumps(meta)})  # sha256-checked, atomic


def load_generations(path: str | Path) -> Generations | None:
    """Read :func:`save_generations` output (None when the file is unreadable, truncated or altered)."""
    from palette_lens.util.integrity import load_checked

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
