"""Load chat models (embedded default, Hugging Face id, local folder, GGUF file) behind TransformerLens.

:func:`load_model` reads a model and :func:`wrap_model` wraps a loaded Hugging Face model into a
:class:`palette_lens.models.chat_model.ChatModel`; together with that module (and ``models.blocks``) it is the only
place that knows TransformerLens / Hugging Face names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from palette_lens.errors import ChatTemplateError, ModelLoadError
from palette_lens.models.chat_model import (
    ChatModel,
    find_post_instruction_ids,
    stop_token_ids,
)

log = logging.getLogger(__name__)


def weights_fingerprint(hf_model: Any) -> str:
    """A short hash naming a model's weights whatever their dtype (checks adapters, gates and directions).

    It hashes the config, every parameter's name and shape and the signs of a sample of its entries
    (entries under 1e-6 in size count as zero). Rounding keeps signs, so one checkpoint loaded in float32,
    bfloat16 or float16 has one fingerprint, and an adapter baked in float32 applies to a bfloat16 load of
    the same weights; another checkpoint (another fine-tune, another quantization) differs in some sign.
    Caches use :func:`weights_digest` instead, which also tells dtypes and small edits apart.

    Examples:
        >>> from palette_lens.models.tiny import tiny_hf_model
        >>> hf = tiny_hf_model("qwen2", 400)
        >>> weights_fingerprint(hf) == weights_fingerprint(hf.to(torch.bfloat16))
        True
    """
    digest = hashlib.sha256()
    _hash_config(digest, hf_model)
    for name, param in _plain_parameters(hf_model):
        sample = param.detach().reshape(-1)[:_SAMPLE].to(device="cpu", dtype=torch.float32)
        signs = torch.where(sample.abs() < 1e-6, 0, torch.sign(sample)).to(torch.int8)
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(signs.numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_digest(hf_model: Any) -> str:
    """A short hash of the config, the dtype and a sample of every parameter's values (keys caches).

    Unlike :func:`weights_fingerprint` it changes with the dtype and with any edit of a sampled entry (a
    merged adapter), so cached residuals and generations are never reused across them.

    Examples:
        >>> from palette_lens.models.tiny import tiny_hf_model
        >>> hf = tiny_hf_model("qwen2", 400)
        >>> weights_digest(hf) == weights_digest(hf.to(torch.bfloat16))
        False
    """
    digest = hashlib.sha256()
    _hash_config(digest, hf_model)
    for name, param in _plain_parameters(hf_model):
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
        digest.update(param.detach().reshape(-1)[:_SAMPLE].to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


_SAMPLE = 64  # entries hashed per parameter


def _hash_config(digest: Any, hf_model: Any) -> None:
    cfg = {k: v for k, v in hf_model.config.to_dict().items() if isinstance(v, (int, float, str, bool))}
    for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    digest.update(json.dumps(cfg, sort_keys=True).encode())


def _plain_parameters(hf_model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    for name, param in hf_model.named_parameters():
        yield name.replace("._original_component", ""), param


def check_weights_on_devices(hf_model: Any, name: str) -> None:
    """Refuse a model whose weights accelerate offloads (to the CPU or disk) with a one-line error.

    palette-lens copies blocks, merges adapters and reads weights directly, which offloaded (meta) weights do
    not allow; a model split across GPUs, or loaded whole on one device, is fine.

    Raises:
        ModelLoadError: some parameters are on the meta device (offloaded), naming the first and what to do.

    Examples:
        >>> check_weights_on_devices(torch.nn.Linear(2, 2), "linear")
    """
    offloaded = [n for n, p in _plain_parameters(hf_model) if p.is_meta]
    if offloaded:
        raise ModelLoadError(
            f"{name}: {len(offloaded)} weights are offloaded by accelerate (e.g. {offloaded[0]}); palette-lens needs "
            "every weight on a device: give the GPUs more room (device_map='auto' with max_memory), load in "
            "bfloat16, or load the whole model on one device (device='cpu')"
        )


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
    check_weights_on_devices(hf_model, name)
    post = find_post_instruction_ids(tokenizer, system_prompt)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    fingerprint = weights_fingerprint(hf_model)
    digest = weights_digest(hf_model)
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
        weights_digest=digest,
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
        device: a single device ("cpu", "cuda:0"); mutually exclusive with ``device_map``. Default: the
            first GPU when there is one (the weights load straight onto it), else the CPU.
        dtype: weight dtype: float32 (default), bfloat16, float16, or ``"auto"`` (the checkpoint's own dtype
            as its config records it; float32 when it records none, e.g. for a GGUF file).
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

    dtype = resolve_dtype(dtype)
    if device_map is not None and device is not None:
        raise ModelLoadError("pass either device or device_map, not both")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device_map is None:
        device = resolve_device(device)
        if device.type != "cpu":
            kwargs["device_map"] = {"": str(device)}  # the weights load straight onto the GPU
    else:
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
    log.info("loaded %s (%s, %s)", name, next(hf_model.parameters()).dtype, getattr(hf_model, "hf_device_map", device))
    return wrap_model(hf_model, tokenizer, name, source=source, system_prompt=system_prompt, adapter_name=adapter_name)


DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """``dtype`` as a ``torch.dtype``, or ``"auto"``; anything else is a one-line :class:`ModelLoadError`.

    Examples:
        >>> resolve_dtype("bfloat16")
        torch.bfloat16
        >>> resolve_dtype("auto")
        'auto'
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ModelLoadError(f"unsupported dtype {dtype} (use float32, bfloat16, float16 or auto)")
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (use float32, bfloat16, float16 or auto)")
    return getattr(torch, dtype)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; None picks the first GPU when there is one, else the CPU.

    Raises:
        ModelLoadError: a device torch does not know, or a GPU that is not there.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1)") from exc
    if resolved.type == "cuda" and (
        not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()
    ):
        raise ModelLoadError(f"device {device!r} is not available here ({torch.cuda.device_count()} GPUs found)")
    return resolved


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
