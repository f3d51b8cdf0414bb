"""Load chat models (embedded default, Hugging Face id, local folder, GGUF file) behind TransformerLens.

This is the only module that knows TransformerLens / Hugging Face names: hook names, decoder layers,
chat rendering and post-instruction positions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from palette_lens.errors import ChatTemplateError, ModelLoadError

log = logging.getLogger(__name__)

Hook = tuple[str, Callable[..., Any]]
RENDER_PLACEHOLDER = "PALETTEPLACEHOLDERx"


@dataclass
class ChatModel:
    """A chat model wrapped in a TransformerLens ``TransformerBridge``, with its tokenizer.

    Attributes:
        bridge: the TransformerBridge; its hooks also fire inside ``hf_model`` (the bridge wraps its modules).
        tokenizer: the model's tokenizer (left padding is used for batches).
        name: a human-readable name for reports.
        fingerprint: a short hash identifying the weights (used to key caches and check adapters).
        post_instruction_ids: token ids of the chat template between the user's text and the answer.
        stop_token_ids: ids that end an assistant turn.
        source: what was loaded (folder / GGUF path / id), for metadata.
        system_prompt: an optional system message rendered before every user prompt (``None``: none).

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
    _extra: dict = field(default_factory=dict, repr=False)

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
        return next(self.hf_model.parameters()).device

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


def weights_fingerprint(hf_model: Any) -> str:
    """A short hash of the config and a sample of every parameter (cheap, distinguishes models)."""
    digest = hashlib.sha256()
    cfg = {k: v for k, v in hf_model.config.to_dict().items() if isinstance(v, (int, float, str, bool))}
    cfg.pop("_name_or_path", None)
    cfg.pop("transformers_version", None)
    digest.update(json.dumps(cfg, sort_keys=True).encode())
    for name, param in hf_model.named_parameters():
        name = name.replace("._original_component", "")
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        sample = param.detach().reshape(-1)[:64].to(torch.float32).cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def wrap_model(
    hf_model: Any,
    tokenizer: Any,
    name: str,
    source: str = "",
    system_prompt: str | None = None,
    adapter_name: str | None = None,
) -> ChatModel:
    """Wrap an already-loaded HF causal LM + tokenizer (modules get wrapped by a TransformerBridge).

    Finds the chat template's post-instruction tokens and the end-of-turn ids, sets ``pad_token`` to the EOS
    token when the tokenizer has none, puts the model in eval mode and fingerprints its weights.

    Args:
        hf_model: a Hugging Face causal LM (``AutoModelForCausalLM``), already on its device and dtype.
        tokenizer: its tokenizer; it must define a chat template.
        name: a human-readable name for reports.
        source: what was loaded (folder / GGUF path / id), kept as metadata.
        system_prompt: an optional system message added to every chat.
        adapter_name: the architecture name TransformerLens should use for the bridge (default: ``name``),
            e.g. ``"Qwen/Qwen2-0.5B-Instruct"`` when ``name`` is not a known Hugging Face id.

    Returns:
        The wrapped :class:`ChatModel`.

    Raises:
        ChatTemplateError: the tokenizer has no chat template, or the template drops the user's message.

    Examples:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> hf = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")      # doctest: +SKIP
        >>> tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")            # doctest: +SKIP
        >>> model = wrap_model(hf, tok, name="qwen-0.5b")                                # doctest: +SKIP
    """
    from transformer_lens.model_bridge import TransformerBridge

    from palette_lens.models.stack_check import check_stack

    check_stack()
    post = find_post_instruction_ids(tokenizer, system_prompt)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    fingerprint = weights_fingerprint(hf_model)
    dtype = next(hf_model.parameters()).dtype
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        adapter_name or name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype
    )
    return ChatModel(
        bridge=bridge,
        tokenizer=tokenizer,
        name=name,
        fingerprint=fingerprint,
        post_instruction_ids=post,
        stop_token_ids=stop_token_ids(tokenizer, post),
        source=source,
        system_prompt=system_prompt,
    )


def load_model(
    model: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict | None = None,
    system_prompt: str | None = None,
) -> ChatModel:
    """Load a chat model: ``None`` (embedded default), a HF id, a local HF folder, or a ``.gguf`` file.

    Args:
        model: what to load; ``None`` or ``"default"`` loads the embedded Qwen2.5-Coder-0.5B-Instruct.
        device: a single device ("cpu", "cuda:0"); mutually exclusive with ``device_map``.
        dtype: weight dtype (float32 by default; bfloat16/float16 for large models on GPU).
        device_map: passed to ``from_pretrained`` (accelerate dispatch), e.g. "auto" for several GPUs.
        system_prompt: an optional system message added to every chat.

    Returns:
        The loaded model as a :class:`ChatModel`.

    Raises:
        ModelLoadError: unknown ``dtype``, both ``device`` and ``device_map`` given, a missing file or
            folder, a folder without ``config.json``, weights that fail to load, or a failed move to
            ``device``.
        ChatTemplateError: the tokenizer has no chat template (not a chat model).

    Examples:
        >>> model = load_model()                                            # doctest: +SKIP
        >>> model = load_model("Qwen/Qwen2.5-1.5B-Instruct", device="cuda")  # doctest: +SKIP
        >>> model.render(["Hello"])                                         # doctest: +SKIP
    """
    from palette_lens.models import embedded

    if isinstance(dtype, str):
        dtype_name, dtype = dtype, getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ModelLoadError(f"unknown dtype {dtype_name!r} (use float32, bfloat16 or float16)")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        if device is not None:
            raise ModelLoadError("pass either device or device_map, not both")
        kwargs["device_map"] = device_map

    if model is None or str(model) == "default":
        folder = embedded.ensure_default_model()
        name, source, tok_kwargs, load_from = embedded.DEFAULT_MODEL_LABEL, str(folder), {}, str(folder)
        adapter_name = embedded.DEFAULT_MODEL_NAME
    else:
        path = Path(model).expanduser()
        adapter_name = None
        if str(model).endswith(".gguf"):
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {path}")
            load_from, name, source = str(path.parent), path.stem, str(path)
            tok_kwargs = {"gguf_file": path.name}
        elif path.exists():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
            load_from, name, source, tok_kwargs = str(path), path.name, str(path), {}
        elif _looks_like_local_path(str(model)):
            raise ModelLoadError(f"model path does not exist: {model}")
        else:
            load_from, name, source, tok_kwargs = str(model), str(model), str(model), {}
    try:
        tokenizer, hf_model = _from_pretrained(load_from, tok_kwargs, kwargs, name, model)
    except ModelLoadError:
        if model is not None and str(model) != "default":
            raise
        # the cached default model did not load: check it by hash, rebuild it when damaged, try once more
        log.warning("the cached default model did not load; verifying its files by sha256")
        load_from = str(embedded.ensure_default_model(verify=True))
        tokenizer, hf_model = _from_pretrained(load_from, tok_kwargs, kwargs, name, model)
    if tok_kwargs.get("gguf_file"):
        hf_model.hf_quantizer = None  # dequantized floats; lets users save/merge like any HF model
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
    if device is not None:
        try:
            hf_model.to(device)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ModelLoadError(f"cannot move the model to {device!r}: {exc}".splitlines()[0]) from exc
    log.info("loaded %s", name)
    return wrap_model(hf_model, tokenizer, name, source=source, system_prompt=system_prompt, adapter_name=adapter_name)


def _from_pretrained(load_from: str, tok_kwargs: dict, kwargs: dict, name: str, model: object) -> tuple[Any, Any]:
    """Tokenizer and HF model from ``load_from``; any failure is a one-line :class:`ModelLoadError`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from, **tok_kwargs)
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError(
                f"{name}: the tokenizer has no chat template; palette-lens needs an instruction-tuned chat model"
            )
        hf_model = AutoModelForCausalLM.from_pretrained(load_from, **tok_kwargs, **kwargs)
    except ModelLoadError:
        raise
    except OSError as exc:
        raise ModelLoadError(f"could not load {model!r}: {exc}".splitlines()[0]) from exc
    except Exception as exc:  # a damaged or unsupported model folder (bad config, truncated weights, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"could not load {model!r} ({type(exc).__name__}: {first}); the files may be incomplete or corrupt"
        ) from exc
    return tokenizer, hf_model


def _looks_like_local_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith((".safetensors", ".bin"))
