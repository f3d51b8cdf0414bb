"""Cached inputs of one decoder block, and running decoder layers alone on them.

Training a single-block adapter only needs the block's inputs: the prefix of the model is frozen, so the
hidden states entering block ``i`` are captured once per prompt (:func:`capture_block_inputs`) and every
training step then costs one block (:func:`run_block`), not the whole model. :func:`run_suffix` runs the
layers from ``i`` to the end on cached inputs and unembeds the last position, for first-token scores of an
adapted block without recomputing the prefix.

Sequences are kept unpadded per prompt and re-collated with left padding; position ids come from the
attention mask (``cumsum − 1``), as in generation. RoPE only sees relative positions, so this equals the
full model's forward on the same batch up to float rounding (tested).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from palette_lens.models.chat_model import RENDER_PLACEHOLDER, ChatModel, render_chat, unwrap_component
from palette_lens.models.hooks import StopForward

log = logging.getLogger(__name__)

_WRAPPER = re.compile(r"(^|\.)_original_component(?=\.|$)")


def clean_name(name: str) -> str:
    """A parameter / module name with TransformerLens wrapper levels removed (plain HF naming)."""
    return _WRAPPER.sub("", name).lstrip(".")


def plain_tensor(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The tensor at plain HF path ``name`` (e.g. ``self_attn.q_proj.weight``) inside a bridge-wrapped module."""
    obj: object = unwrap_component(module)
    for part in name.split("."):
        obj = getattr(obj, part)
        if isinstance(obj, torch.nn.Module):
            obj = unwrap_component(obj)
    if not isinstance(obj, torch.Tensor):
        raise KeyError(name)
    return obj


def copy_weights_into(fresh: torch.nn.Module, wrapped: torch.nn.Module) -> torch.nn.Module:
    """Load into the plain module ``fresh`` every parameter and buffer of ``wrapped`` under the same plain names."""
    state = {k: plain_tensor(wrapped, k).detach() for k in fresh.state_dict()}
    fresh.load_state_dict(state, strict=True)
    return fresh



def linear_module_names(layer: torch.nn.Module, prefix: str) -> list[str]:
    """Plain HF names of every ``nn.Linear`` inside ``layer``, prefixed (e.g. ``model.layers.11.mlp.up_proj``)."""
    return sorted(f"{prefix}.{n}" for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear))

def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: accelerate's execution device when dispatched, else its weights'.

    Examples:
        >>> module_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution) if not isinstance(execution, int) else torch.device("cuda", execution)
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _on_device(value: object, device: torch.device) -> object:
    """``value`` (a tensor, or a tuple of tensors, e.g. RoPE's (cos, sin)) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_on_device(v, device) for v in value)
    return value


def plain_decoder_layer(model: ChatModel, index: int) -> torch.nn.Module:
    """A fresh copy of decoder layer ``index`` as a plain HF module (no bridge wrappers, no hooks).

    The caller's model is not touched; the copy has the same weights, dtype and device.
    """
    raw = model.decoder_layers()[index]
    param = next(raw.parameters())
    fresh = type(raw)(model.hf_model.config, index).to(device=param.device, dtype=param.dtype)
    return copy_weights_into(fresh, raw).eval()


def rotary_embedding(model: ChatModel) -> torch.nn.Module:
    """A private copy of the model's rotary embedding module (``decoder.rotary_emb``)."""
    rot = getattr(model.decoder, "rotary_emb", None)
    if rot is None:
        raise RuntimeError(f"{type(model.hf_model).__name__} has no shared rotary embedding; not supported")
    return copy.deepcopy(unwrap_component(rot))


def prefix_length(model: ChatModel) -> int:
    """Number of chat-template tokens before the user's text (identical for every prompt).

    Those tokens (system prompt, role header) have the same hidden states for every prompt, so a
    domain-specific training target on them would contradict itself; training skips them.
    """
    text = render_chat(model.tokenizer, RENDER_PLACEHOLDER, model.system_prompt)
    start = text.find(RENDER_PLACEHOLDER)
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return sum(1 for _s, e in enc["offset_mapping"] if e <= start)


# --------------------------------------------------------------------- masks and positions
def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: ``cumsum(mask) − 1`` (pads get 0). [batch, seq] → [batch, seq]."""
    pos = mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)


def causal_mask_4d(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask with padded keys masked: [batch, seq] → [batch, 1, seq, seq].

    Allowed entries are 0, blocked ones the dtype's minimum (not −inf, so fully padded query rows stay
    finite).
    """
    b, s = mask.shape
    causal = torch.ones(s, s, dtype=torch.bool, device=mask.device).tril()
    allowed = causal[None, :, :] & mask.bool()[:, None, :]
    out = torch.zeros(b, 1, s, s, dtype=dtype, device=mask.device)
    return out.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def block_kwargs(rotary: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> dict:
    """Keyword arguments a HF decoder layer needs besides ``hidden_states``."""
    pos = position_ids_from_mask(mask)
    return {
        "attention_mask": causal_mask_4d(mask, hidden.dtype),
        "position_ids": pos,
        "position_embeddings": rotary(hidden, pos),
        "use_cache": False,
    }


def run_block(layer: torch.nn.Module, rotary: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run one HF decoder layer alone.

    Args:
        layer: a decoder layer (plain or wrapped, with or without LoRA).
        rotary: the model's rotary embedding module.
        hidden: [batch, seq, d_model] the layer's input (left padded).
        mask: [batch, seq] attention mask (1 = real token).

    Returns:
        [batch, seq, d_model] the layer's output.
    """
    out = layer(hidden, **block_kwargs(rotary, hidden, mask))
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------- cached inputs
@dataclass
class BlockInputs:
    """Inputs and outputs of decoder block ``layer_index`` for a list of prompts, unpadded per prompt.

    Attributes:
        layer_index: the block (its output is ``resid_pre`` of ``layer_index + 1``).
        prompts: the user prompts, in order.
        hidden_in: per prompt, [seq_i, d_model] the block's input (float32, CPU).
        hidden_out: per prompt, [seq_i, d_model] the frozen block's output.
        n_prefix: chat-template tokens before the user's text (same for every prompt).
    """

    layer_index: int
    prompts: list[str]
    hidden_in: list[torch.Tensor]
    hidden_out: list[torch.Tensor]
    n_prefix: int = 0
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def index(self, prompt: str) -> int:
        if not self._index:
            self._index = {p: i for i, p in enumerate(self.prompts)}
        return self._index[prompt]

    def subset(self, prompts: Sequence[str]) -> BlockInputs:
        """The entries of ``prompts`` (all must be present), in that order."""
        idx = [self.index(p) for p in prompts]
        return BlockInputs(
            self.layer_index, list(prompts), [self.hidden_in[i] for i in idx], [self.hidden_out[i] for i in idx],
            self.n_prefix,
        )

    def last_out(self, position: int = -1) -> torch.Tensor:
        """Block outputs at one post-instruction offset for every prompt: [n, d_model]."""
        return torch.stack([h[position] for h in self.hidden_out])

    def collate(
        self, indices: Sequence[int], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A left-padded batch on ``device`` (default CPU): ``h_in`` [b, s, d], ``mask`` [b, s] (long), ``h_out`` [b, s, d]."""
        seqs = [self.hidden_in[i] for i in indices]
        s = max(x.shape[0] for x in seqs)
        d = seqs[0].shape[1]
        h_in = torch.zeros(len(seqs), s, d, dtype=seqs[0].dtype, device=device)
        h_out = torch.zeros_like(h_in)
        mask = torch.zeros(len(seqs), s, dtype=torch.long, device=device)
        for j, i in enumerate(indices):
            n = self.hidden_in[i].shape[0]
            h_in[j, s - n :] = self.hidden_in[i]
            h_out[j, s - n :] = self.hidden_out[i]
            mask[j, s - n :] = 1
        return h_in, mask, h_out

    def __add__(self, other: BlockInputs) -> BlockInputs:
        if other.layer_index != self.layer_index:
            raise ValueError("cannot join inputs of different blocks")
        return BlockInputs(
            self.layer_index, self.prompts + other.prompts, self.hidden_in + other.hidden_in,
            self.hidden_out + other.hidden_out, self.n_prefix,
        )


@torch.no_grad()
def capture_block_inputs(
    model: ChatModel,
    prompts: Sequence[str],
    layer_index: int,
    batch_size: int = 16,
    desc: str | None = "block inputs",
) -> BlockInputs:
    """Run the model up to block ``layer_index`` once per prompt and keep that block's input and output.

    The forward pass stops right after the block (later layers are not computed). Prompts are batched
    longest-first with left padding; results come back unpadded, in the caller's order.

    Args:
        model: the chat model (not modified).
        prompts: user prompts (rendered with the chat template here).
        layer_index: the decoder block to capture (0-based).
        batch_size: prompts per forward pass.
        desc: progress-bar label (None hides it).
    """
    prompts = list(dict.fromkeys(prompts))  # unique, order kept
    layer = model.decoder_layers()[layer_index]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    h_in: list[torch.Tensor | None] = [None] * len(prompts)
    h_out: list[torch.Tensor | None] = [None] * len(prompts)
    grabbed: dict[str, torch.Tensor] = {}

    def pre_hook(_module, args, kwargs):
        grabbed["in"] = (args[0] if args else kwargs["hidden_states"]).detach()

    def post_hook(_module, _args, _kwargs, output):
        grabbed["out"] = (output[0] if isinstance(output, tuple) else output).detach()
        raise StopForward

    handles = [
        layer.register_forward_pre_hook(pre_hook, with_kwargs=True),
        layer.register_forward_hook(post_hook, with_kwargs=True),
    ]
    try:
        ordered = [prompts[i] for i in order]
        for start, batch in zip(range(0, len(ordered), batch_size), model.batches(ordered, batch_size, desc)):
            enc = model.encode(batch)
            mask = enc["attention_mask"]
            try:
                model.decoder(**enc, position_ids=position_ids_from_mask(mask), use_cache=False)
            except StopForward:
                pass
            for j in range(len(batch)):
                keep = mask[j].bool()
                i = order[start + j]
                h_in[i] = grabbed["in"][j, keep].float().cpu().clone()
                h_out[i] = grabbed["out"][j, keep].float().cpu().clone()
    finally:
        for h in handles:
            h.remove()
    return BlockInputs(layer_index, prompts, h_in, h_out, prefix_length(model))  # type: ignore[arg-type]


# --------------------------------------------------------------------- the rest of the model
@torch.no_grad()
def run_suffix(
    model: ChatModel,
    inputs: BlockInputs,
    first_block: torch.nn.Module | None = None,
    batch_size: int = 16,
    rotary: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Next-token log-probs after each prompt, computed from cached inputs of block ``inputs.layer_index``.

    Runs ``first_block`` (default: the model's own block) and then the model's remaining layers, the final
    norm and the LM head on the last position only.

    Returns:
        [n_prompts, vocab] log-probabilities (float32, CPU), like :meth:`ChatModel.last_logits`.
    """
    rotary = rotary if rotary is not None else rotary_embedding(model)
    layers = model.decoder_layers()
    first = first_block if first_block is not None else layers[inputs.layer_index]
    rest = layers[inputs.layer_index + 1 :]
    norm = model.decoder.norm
    head = model.hf_model.get_output_embeddings()
    dtype = next(model.hf_model.parameters()).dtype
    first_dtype = next(first.parameters()).dtype  # a float32 training copy of a bf16 / fp16 block
    first_device = module_device(first)
    out = []
    for start in range(0, len(inputs), batch_size):
        idx = list(range(start, min(start + batch_size, len(inputs))))
        h, mask, _ = inputs.collate(idx, device=first_device)
        h = h.to(first_dtype)
        h = first(h, **block_kwargs(rotary, h, mask))
        h = h[0] if isinstance(h, tuple) else h
        h = h.to(dtype)  # the remaining layers run in the model's own dtype
        kwargs = block_kwargs(rotary, h, mask)
        for layer in rest:  # under a device map each layer computes on its own device
            device = module_device(layer)
            if h.device != device:
                h, kwargs = h.to(device), {k: _on_device(v, device) for k, v in kwargs.items()}
            h = layer(h, **kwargs)
            h = h[0] if isinstance(h, tuple) else h
        h = h[:, -1]
        h = norm(h.to(module_device(norm)))
        logits = head(h.to(module_device(head))).float()
        out.append(torch.log_softmax(logits, dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
