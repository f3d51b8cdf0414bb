"""Checking known completions instead of generating them: greedy drafts verified by teacher forcing.

A profile leaves most prompts as the vanilla model answers them. :func:`verify_greedy` checks in one
forward pass per batch whether a model's greedy completion equals a given one (speculative decoding with
vanilla's completion as the draft); :func:`generate_with_drafts` keeps the drafts it reproduces and
generates only from the first token where it differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from palette_lens.generation.greedy import (
    Generations,
    either,
    encode_prompts,
    generate_two_phase,
    left_pad,
    package_generations,
    stop_decider,
)
from palette_lens.generation.shared_prefix import PrefixStates, run_from_layer
from palette_lens.models.chat_model import ChatModel


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
            model whose layers below it are ``lm``'s (:mod:`palette_lens.generation.shared_prefix`); only the layers
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
        enc = left_pad(seqs, pad, device)
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
    stop_when: Callable[[str], bool] | None = None,
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
    verdict is decided is not continued at all. Arguments not listed below are as in
    :func:`generate_completions`.

    Args:
        drafts: completions of the same prompts by another model (e.g. vanilla), with ``token_ids`` and
            ``ended`` (produced by :func:`generate_completions` with ``max_new_tokens`` at least as large).
        generate: per prompt, True to skip the draft and generate directly (e.g. authorized-domain prompts,
            which a profile is meant to change).
        stop_on_refusal: as in :func:`generate_completions`; a draft that was cut once its
            verdict was decided and that ``lm`` reproduces gets the same verdict from ``lm``.
        stop_when_judged: as ``stop_on_refusal``.
        stop_when: as in :func:`generate_completions`; a draft that first differs only after it holds is not
            continued.
        prefix: per prompt, the hidden states entering a decoder layer for prompt + draft (truncated to
            ``max_new_tokens``), from a model equal to ``lm`` below that layer: the check then runs only
            the layers from there on (:func:`verify_greedy`).
    """
    t0 = time.perf_counter()
    prompts = list(prompts)
    n = len(prompts)
    if len(drafts.token_ids) != n:
        raise ValueError("drafts must hold token ids for every prompt")
    stop = set(model.stop_token_ids)
    ids = encode_prompts(model, prompts)
    judged = stop_decider(stop_on_refusal, stop_when_judged)
    decided = either(judged, stop_when)
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
        d_new, d_end, d_first = generate_two_phase(
            model, lm, [ids[i] for i in direct], max_new_tokens, batch_size, first_phase, True, desc, decided=judged,
            stop_when=stop_when,
        )
        for j, i in enumerate(direct):
            new[i], ended[i], first[i] = d_new[j], d_end[j], d_first[j]
    if cont:
        budget = max(max_new_tokens - len(p) for _, p in cont)
        c_new, c_end, _ = generate_two_phase(
            model, lm, [ids[i] + p for i, p in cont], budget, batch_size, first_phase, False,
            f"{desc} (after drafts)" if desc else None, decided=judged, heads=[p for _, p in cont], stop_when=stop_when,
        )
        for (i, p), extra, e in zip(cont, c_new, c_end):
            room = max_new_tokens - len(p)
            new[i], ended[i] = p + extra[:room], e and len(extra) <= room
    return package_generations(model, new, ended, first, refusal_ids, keep_logprobs, t0, status)
