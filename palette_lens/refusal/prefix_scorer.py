"""Fast first-token scoring: :class:`PrefixScorer` runs a fixed prompt list many times under different hooks.

The chat template's shared prefix is run once per call and its key/value cache reused by every batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch

from palette_lens.models.chat_model import ChatModel, Hook
from palette_lens.models.hooks import stop_forward_hook, stopped_early


class PrefixScorer:
    """First-token log-probs of a fixed prompt list, run many times under different hooks.

    Rendered chat prompts share a template prefix (for Qwen, the default system message and the user
    header: about half of a short prompt's tokens). It is run once per call (with the call's hooks, so
    interventions act on it too) and its key/value cache is reused by every batch; the rest is
    tokenized once, left-padded within length-sorted batches. The result equals
    :meth:`ChatModel.last_logits` up to float error.

    Args:
        model: the chat model.
        prompts: user prompts (rendered with the chat template here).
        batch_size: prompts per forward pass.
        use_prefix_cache: False runs every prompt in full (same numbers, slower).
        min_suffix: tokens of every prompt kept out of the shared prefix (e.g. the post-instruction tokens).
    """

    def __init__(
        self,
        model: ChatModel,
        prompts: Sequence[str],
        batch_size: int = 16,
        use_prefix_cache: bool = True,
        min_suffix: int = 1,
    ):
        self.model = model
        self.prompts = tuple(prompts)
        tok = model.tokenizer
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in model.render(self.prompts)]
        n_prefix = _common_prefix_len(ids, min_suffix) if use_prefix_cache and ids else 0
        self.prefix = torch.tensor(ids[0][:n_prefix], dtype=torch.long) if n_prefix else None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.batches: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            suffixes = [ids[i][n_prefix:] for i in idx]
            width = max(len(x) for x in suffixes)
            inp = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, x in enumerate(suffixes):
                inp[j, width - len(x) :] = torch.tensor(x)
                mask[j, width - len(x) :] = 1
            self.batches.append((idx, inp, mask))

    @property
    def n_prefix(self) -> int:
        return 0 if self.prefix is None else int(self.prefix.numel())

    @torch.no_grad()
    def run(
        self,
        hooks: Sequence[Hook] = (),
        stop_after: int | None = None,
        on_prefix: Callable[[bool], None] | None = None,
        hooks_on_prefix: bool = True,
    ) -> Iterator[tuple[list[int], torch.Tensor | None]]:
        """Run the prefix once, then every batch, under ``hooks``.

        Args:
            hooks: TransformerLens hooks active during all passes (see ``hooks_on_prefix``).
            stop_after: stop each pass at the input of block ``stop_after`` (no output; for reading
                residuals with hooks); None runs the whole model.
            on_prefix: called with True before and False after the prefix pass (lets read-out hooks skip it).
            hooks_on_prefix: False runs the shared prefix without ``hooks`` (an edit of the prompt's own
                tokens only, as the bake trains it).

        Yields:
            (indices of the batch's prompts, final hidden state at the last position [b, d_model] or None).
        """
        model = self.model
        decoder, device = model.decoder, model.device
        extra: list[Hook] = []
        if stop_after is not None and stop_after < model.n_layers:
            extra.append((model.resid_pre_hook(stop_after), stop_forward_hook))
        cache = None
        if self.prefix is not None:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.hf_model.config)
            if on_prefix:
                on_prefix(True)
            with model.hooks([*hooks, *extra] if hooks_on_prefix else extra):
                # filled in place, also when a stop hook ends the pass early
                stopped_early(
                    lambda: decoder(input_ids=self.prefix[None].to(device), past_key_values=cache, use_cache=True)
                )
            if on_prefix:
                on_prefix(False)
        with model.hooks([*hooks, *extra]):
            for idx, inp, mask in self.batches:
                b, p = len(idx), self.n_prefix
                kwargs: dict = {"use_cache": cache is not None}
                if cache is not None:
                    c = copy.deepcopy(cache)
                    c.batch_repeat_interleave(b)
                    kwargs["past_key_values"] = c
                full_mask = torch.cat([torch.ones(b, p, dtype=torch.long), mask], dim=1)
                pos = (full_mask.cumsum(-1) - 1).clamp_min(0)[:, p:]
                res = stopped_early(
                    lambda: decoder(
                        input_ids=inp.to(device), attention_mask=full_mask.to(device), position_ids=pos.to(device),
                        **kwargs,
                    )
                )
                yield idx, None if res is None else res.last_hidden_state[:, -1]

    def logprobs(self, hooks: Sequence[Hook] = (), hooks_on_prefix: bool = True) -> torch.Tensor:
        """[n_prompts, vocab] log-probs of the first answer token (float32, CPU), in the prompts' order."""
        head = self.model.hf_model.get_output_embeddings()
        out = torch.empty(0)
        with torch.no_grad():
            for idx, hidden in self.run(hooks, hooks_on_prefix=hooks_on_prefix):
                lp = torch.log_softmax(head(hidden).float(), dim=-1).cpu()
                if out.numel() == 0:
                    out = torch.empty(len(self.prompts), lp.shape[-1])
                out[idx] = lp
        return out


def _common_prefix_len(ids: Sequence[Sequence[int]], min_suffix: int = 1) -> int:
    """Length of the longest common token prefix, leaving at least ``min_suffix`` tokens of every prompt."""
    n = min(len(x) for x in ids) - max(1, min_suffix)
    first = ids[0]
    for k in range(max(0, n)):
        t = first[k]
        if any(x[k] != t for x in ids):
            return k
    return max(0, n)
