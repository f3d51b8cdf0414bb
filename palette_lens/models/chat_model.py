"""A loaded chat model behind TransformerLens: :class:`ChatModel`.

It holds the tokenizer, the chat rendering, the post-instruction positions, the hook names, the bridge and
the plain Hugging Face model; :mod:`palette_lens.models.loading` makes one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from palette_lens.errors import ChatTemplateError, ModelLoadError

Hook = tuple[str, Callable[..., Any]]


RENDER_PLACEHOLDER = "PALETTEPLACEHOLDERx"


@dataclass
class ChatModel:
    """A chat model wrapped in a TransformerLens ``TransformerBridge``, with its tokenizer.

    Attributes:
        bridge: the TransformerBridge; its hooks also fire inside ``hf_model`` (the bridge wraps its modules).
        tokenizer: the model's tokenizer (left padding is used for batches).
        name: a human-readable name for reports.
        fingerprint: a short hash naming the weights whatever their dtype (adapters, gates and directions
            record it and refuse another model; see :func:`palette_lens.models.loading.weights_fingerprint`).
        post_instruction_ids: token ids of the chat template between the user's text and the answer.
        stop_token_ids: ids that end an assistant turn.
        source: what was loaded (folder / GGUF path / id), for metadata.
        system_prompt: an optional system message rendered before every user prompt (``None``: none).
        weights_digest: a short hash of the weights' values and dtype (keys caches; empty: use the fingerprint).

    The hidden size and depth are ``d_model`` and ``n_layers``; ``positions`` are the post-instruction
    positions as negative offsets (e.g. ``[-5, -4, -3, -2, -1]``). ``last_logits`` returns
    ``[n_prompts, vocab]`` log-probabilities; ``encode`` returns ``input_ids`` / ``attention_mask`` of shape
    ``[batch, seq]`` (left padded).

    Examples:
        >>> model = load_model()                                        # doctest: +SKIP
        >>> model.n_layers, model.d_model                               # doctest: +SKIP
        (24, 896)
        >>> model.last_logits(["Write a haiku."]).shape                 # doctest: +SKIP
        torch.Size([1, 151936])
    """

    bridge: Any
    tokenizer: Any
    name: str
    fingerprint: str
    post_instruction_ids: list[int]
    stop_token_ids: list[int]
    source: str = ""
    system_prompt: str | None = None
    weights_digest: str = ""
    _extra: dict = field(default_factory=dict, repr=False)

    @property
    def cache_key(self) -> str:
        """What caches of this model's activations and generations are keyed by (weights, values and dtype)."""
        return f"{self.fingerprint}-{self.weights_digest}" if self.weights_digest else self.fingerprint

    # ----------------------------------------------------------------- structure
    @property
    def hf_model(self) -> Any:
        """The underlying Hugging Face causal LM (its modules are wrapped by the bridge)."""
        return self.bridge.original_model

    @property
    def decoder(self) -> Any:
        """The HF decoder stack without the LM head (returns hidden states, not logits)."""
        return self.hf_model.get_decoder() if hasattr(self.hf_model, "get_decoder") else self.hf_model.model

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def device(self) -> torch.device:
        """Where the inputs go: the device of the first weights (the embedding's, under a device map)."""
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (float32, bfloat16 or float16)."""
        return next(self.hf_model.parameters()).dtype

    @property
    def n_post(self) -> int:
        """Number of post-instruction tokens."""
        return len(self.post_instruction_ids)

    @property
    def positions(self) -> list[int]:
        """Post-instruction positions as negative offsets from the end of a rendered prompt, e.g. [-5..-1]."""
        return list(range(-self.n_post, 0))

    @staticmethod
    def resid_pre_hook(layer: int) -> str:
        """TransformerLens hook name of the residual stream entering block ``layer``."""
        return f"blocks.{layer}.hook_resid_pre"

    def decoder_layers(self) -> list[torch.nn.Module]:
        """The raw Hugging Face decoder layers (inside the bridge wrappers), in order."""
        return [unwrap_component(block) for block in self.bridge.blocks]

    def decoder_layer_prefix(self, layer: int) -> str:
        """Module path of decoder layer ``layer`` in a *plain* HF model (e.g. ``model.layers.3``)."""
        return f"{_layers_attr_path(self.hf_model)}.{layer}"

    # ----------------------------------------------------------------- chat rendering
    def render(self, prompts: Sequence[str]) -> list[str]:
        """Render user prompts with the model's own chat template, ready for the assistant's answer."""
        return [render_chat(self.tokenizer, p, self.system_prompt) for p in prompts]

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Render and tokenize a batch with left padding: ``input_ids``, ``attention_mask`` [batch, seq]."""
        texts = self.render(prompts)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    # ----------------------------------------------------------------- forward passes
    def batches(self, prompts: Sequence[str], batch_size: int, desc: str | None = None) -> Iterator[list[str]]:
        """Yield prompt batches, sorted by nothing (order kept), with a progress bar when ``desc`` is set."""
        starts = range(0, len(prompts), batch_size)
        it = tqdm(starts, desc=desc, leave=False, disable=desc is None or len(starts) < 2)
        for start in it:
            yield list(prompts[start : start + batch_size])

    @torch.no_grad()
    def last_logits(
        self, prompts: Sequence[str], hooks: Sequence[Hook] = (), batch_size: int = 32, desc: str | None = None
    ) -> torch.Tensor:
        """Next-token log-probabilities after each rendered prompt: [n_prompts, vocab] (float32, CPU).

        Only the last position is unembedded (the full-vocabulary projection is the costly part).
        """
        out = []
        base = self.decoder
        head = self.hf_model.get_output_embeddings()
        with self.hooks(hooks):
            for batch in self.batches(prompts, batch_size, desc):
                enc = self.encode(batch)
                hidden = base(**enc, use_cache=False).last_hidden_state[:, -1]
                logits = head(hidden).float()
                out.append(torch.log_softmax(logits, dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    @contextmanager
    def hooks(self, hooks: Sequence[Hook] = ()) -> Iterator[None]:
        """Attach TransformerLens forward hooks for the duration of the block (always removed)."""
        if not hooks:
            yield
            return
        with self.bridge.hooks(fwd_hooks=list(hooks)):
            yield

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        batch_size: int = 16,
        hooks: Sequence[Hook] = (),
        desc: str | None = None,
        model: Any | None = None,
    ) -> list[str]:
        """Greedy completions, batched with left padding, each stopping at end of turn.

        ``model`` may be another HF model sharing this tokenizer (e.g. a merged profile); by default the
        wrapped model is used, so TransformerLens hooks apply through the KV cache.
        """
        lm = model if model is not None else self.hf_model
        texts: list[str] = []
        # Longest prompts first keeps padding low; results are put back in the caller's order.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: dict[int, str] = {}
        ctx = self.hooks(hooks) if model is None else nullcontext()
        with ctx:
            for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None):
                idx = order[start : start + batch_size]
                enc = self.encode([prompts[i] for i in idx])
                enc = {k: v.to(_model_device(lm)) for k, v in enc.items()}
                out = lm.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=self.stop_token_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                for i, seq in zip(idx, new):
                    results[i] = self.tokenizer.decode(seq, skip_special_tokens=True).strip()
        texts = [results[i] for i in range(len(prompts))]
        return texts


# --------------------------------------------------------------------- helpers
def unwrap_component(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "_original_component", module)


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _layers_attr_path(hf_model: Any) -> str:
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = hf_model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return path
    raise ModelLoadError(f"cannot find the decoder layers of {type(hf_model).__name__}")


def render_chat(tokenizer: Any, prompt: str, system_prompt: str | None) -> str:
    messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def find_post_instruction_ids(tokenizer: Any, system_prompt: str | None = None) -> list[int]:
    """Token ids of the chat template that follow the user's text (e.g. Qwen's 5 tokens).

    Renders a chat with a placeholder message and takes the tokens that start after the placeholder
    (by character offsets, so tokens merged across the boundary are handled).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "this tokenizer has no chat template; palette-lens needs a chat (instruction-tuned) model "
            "whose tokenizer defines `chat_template`"
        )
    text = render_chat(tokenizer, RENDER_PLACEHOLDER, system_prompt)
    end = text.rfind(RENDER_PLACEHOLDER)
    if end < 0:
        raise ChatTemplateError("the chat template drops the user's message")
    end += len(RENDER_PLACEHOLDER)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    post = [i for i, (s, _e) in zip(ids, offsets) if s >= end]
    if not post:
        raise ChatTemplateError("the chat template adds no tokens after the user's message")
    return post


def stop_token_ids(tokenizer: Any, post_ids: Sequence[int]) -> list[int]:
    """Ids ending an assistant turn: EOS plus known end-of-turn tokens present in the vocabulary."""
    candidates = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"]
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in candidates:
        if tok in vocab and vocab[tok] not in ids:
            ids.append(int(vocab[tok]))
    return ids
