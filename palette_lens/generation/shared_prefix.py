"""Reusing a reference model's hidden states where a variant's weights are the reference's.

A profile's adapters change one block each (blocks 17–18 of 24 on the default model): for any token
sequence, every layer below the first changed one computes exactly what the vanilla model computes. When a
profile's greedy completion is checked against vanilla's (teacher forcing,
:func:`palette_lens.generation.drafts.verify_greedy`), the hidden states entering that layer can therefore be
computed once with the vanilla model (:func:`capture_prefix_states`) and every profile only runs the
layers from there on (:func:`run_from_layer`): a quarter of the model instead of all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from palette_lens.models.blocks import block_kwargs, position_ids_from_mask
from palette_lens.models.hooks import StopForward


@dataclass
class PrefixStates:
    """Hidden states entering decoder layer ``layer`` for a list of token sequences.

    Attributes:
        layer: the decoder layer whose input these are (0-based).
        hidden: per sequence, [seq_i, d_model] (unpadded, on CPU, the model's dtype).
    """

    layer: int
    hidden: list[torch.Tensor]

    def subset(self, indices: Sequence[int]) -> PrefixStates:
        return PrefixStates(self.layer, [self.hidden[i] for i in indices])

    def collate(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        """Left-padded [b, s, d_model] batch of the sequences ``indices`` (padding: zeros)."""
        seqs = [self.hidden[i] for i in indices]
        width = max(h.shape[0] for h in seqs)
        out = torch.zeros(len(seqs), width, seqs[0].shape[1], dtype=seqs[0].dtype)
        for j, h in enumerate(seqs):
            out[j, width - h.shape[0] :] = h
        return out.to(device)


def _decoder(lm: Any) -> Any:
    return lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device == b.device and a.data_ptr() == b.data_ptr():
        return True
    return bool(torch.equal(a, b.to(a.device)))


def first_changed_layer(reference: Any, lm: Any) -> int:
    """Index of the first decoder layer of ``lm`` whose computation may differ from ``reference``'s.

    0 when the embeddings, the architecture or the layer count differ (nothing can be reused);
    ``n_layers`` when every layer is the same (only the final norm or the head may differ).
    """
    ref_dec, dec = _decoder(reference), _decoder(lm)
    if type(ref_dec) is not type(dec) or len(ref_dec.layers) != len(dec.layers):
        return 0
    if not _same(ref_dec.embed_tokens.weight, dec.embed_tokens.weight):
        return 0
    for i, (a, b) in enumerate(zip(ref_dec.layers, dec.layers)):
        pa, pb = a.state_dict(), b.state_dict()
        if pa.keys() != pb.keys() or any(not _same(pa[k], pb[k]) for k in pa):
            return i
    return len(dec.layers)


@torch.no_grad()
def capture_prefix_states(
    lm: Any,
    seqs: Sequence[Sequence[int]],
    layer: int,
    pad_id: int,
    batch_size: int = 16,
    desc: str | None = None,
) -> PrefixStates:
    """Hidden states entering decoder layer ``layer`` of ``lm`` for each token sequence (one partial pass).

    Sequences are batched longest first with left padding; the forward pass stops at ``layer``.
    """
    from palette_lens.generation.greedy import left_pad

    dec = _decoder(lm)
    device = next(lm.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    hidden: list[torch.Tensor | None] = [None] * len(seqs)
    grabbed: dict[str, torch.Tensor] = {}

    def pre_hook(_module, args, kwargs):
        grabbed["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
        raise StopForward

    handle = dec.layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=desc is None or len(starts) < 2):
            idx = order[start : start + batch_size]
            enc = left_pad([seqs[i] for i in idx], pad_id, device)
            mask = enc["attention_mask"]
            try:
                dec(**enc, position_ids=position_ids_from_mask(mask), use_cache=False)
            except StopForward:
                pass
            for j, i in enumerate(idx):
                hidden[i] = grabbed["h"][j, mask[j].bool()].cpu().clone()
    finally:
        handle.remove()
    return PrefixStates(layer, hidden)  # type: ignore[arg-type]


@torch.no_grad()
def run_from_layer(lm: Any, hidden: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """``lm``'s decoder from layer ``start`` on, then its final norm.

    Args:
        lm: a plain HF causal LM.
        hidden: [b, s, d_model] hidden states entering layer ``start`` (left padded).
        mask: [b, s] attention mask (1 = real token).
        start: the first layer to run.

    Returns:
        [b, s, d_model] the decoder's last hidden state (what the LM head reads).
    """
    dec = _decoder(lm)
    hidden = hidden.to(dtype=next(lm.parameters()).dtype)
    kwargs = block_kwargs(dec.rotary_emb, hidden, mask)
    for layer in dec.layers[start:]:
        out = layer(hidden, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return dec.norm(hidden)
