"""Tiny randomly initialised chat models built offline (for tests, GPU smoke checks and quick demos).

A byte-level BPE tokenizer is trained on a few sentences and given a real chat template (ChatML for the
Qwen2-style model, the Llama-3 template for the Llama-style model); the model is built from a small
Hugging Face config with random weights. Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_CORPUS = [
    "How do I write a program that sorts a list of numbers in Python?",
    "I'm sorry, but I can't assist with that request. As an AI, I cannot help.",
    "Sure! Here is a recipe for pancakes with flour, eggs and milk.",
    "Explain how the heart pumps blood through the body, step by step.",
    "Write a short poem about the sea, the wind and the morning light.",
    "The capital of France is Paris. Unfortunately, I don't know that.",
    "user assistant system: malware, virus, network, password, attack, defend.",
]


def tiny_tokenizer(style: str = "qwen2", vocab_size: int = 400) -> Any:
    """A small byte-level BPE tokenizer with the chat template of ``style`` ("qwen2" or "llama")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        template, eos, pad = CHATML_TEMPLATE, "<|im_end|>", "<|endoftext|>"
    elif style == "llama":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        template, eos, pad = LLAMA3_TEMPLATE, "<|eot_id|>", "<|end_of_text|>"
    else:
        raise ValueError(f"unknown tiny model style {style!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=pad, chat_template=template, clean_up_tokenization_spaces=False
    )


def tiny_hf_model(style: str, vocab_size: int, seed: int = 0, n_layers: int = 3, d_model: int = 64) -> Any:
    """A random Qwen2- or Llama-style causal LM."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    if style == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.eval()


def tiny_chat_model(style: str = "qwen2", seed: int = 0, n_layers: int = 3, d_model: int = 64,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    device_map: dict[str, str] | str | None = None):
    """A tiny :class:`palette_lens.models.loading.ChatModel` with random weights, built offline.

    Meant for tests, smoke checks and quick demos: its completions are noise, but every stage runs on it.

    Args:
        style: ``"qwen2"`` (ChatML template) or ``"llama"`` (Llama-3 template).
        seed: the seed of the random weights.
        n_layers: the number of decoder blocks.
        d_model: the hidden size (the residual width).
        dtype: the weights' dtype (the same random weights, cast from float32).
        device: where the weights go (e.g. ``"cuda"``), unless ``device_map`` is given.
        device_map: dispatch the model with accelerate, module name → device, or ``"blocks"`` for the
            embedding and each decoder block as map entries on ``device`` (hooks on every entry, as a
            model split across GPUs has; the GPU smoke check and the dispatch tests use it).

    Returns:
        A wrapped :class:`palette_lens.models.loading.ChatModel` named ``tiny-{style}``.

    Raises:
        ValueError: ``style`` is neither ``"qwen2"`` nor ``"llama"``.

    Examples:
        >>> model = tiny_chat_model(n_layers=2, d_model=32)
        >>> model.name, model.n_layers, model.d_model
        ('tiny-qwen2', 2, 32)
        >>> model.last_logits(["hi"]).shape
        torch.Size([1, 400])
    """
    from palette_lens.models.loading import wrap_model

    tokenizer = tiny_tokenizer(style)
    hf_model = tiny_hf_model(style, len(tokenizer), seed=seed, n_layers=n_layers, d_model=d_model).to(dtype)
    if device_map is None:
        hf_model = hf_model.to(device)
    else:
        from accelerate import dispatch_model

        if device_map == "blocks":
            names = ["model.embed_tokens", "model.rotary_emb", *[f"model.layers.{i}" for i in range(n_layers)],
                     "model.norm", "lm_head"]
            device_map = {name: str(device) for name in names}
        hf_model = dispatch_model(hf_model, device_map=dict(device_map), force_hooks=True)
    adapter = "Qwen/Qwen2-0.5B-Instruct" if style == "qwen2" else "meta-llama/Llama-3.2-1B-Instruct"
    return wrap_model(hf_model, tokenizer, name=f"tiny-{style}", source=f"tiny:{style}:{seed}", adapter_name=adapter)


def random_lora_factors(
    model: Any, layer_index: int, generator: torch.Generator, rank: int = 8, scale: float = 0.2
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random LoRA factors on every linear module of one block (for tests of adapters, composition, drafts).

    Args:
        model: a :class:`palette_lens.models.loading.ChatModel`.
        layer_index: the block.
        generator: draws A then B per module, in module-name order.
        rank: factor rank.
        scale: the scale of the standard-normal entries.

    Returns:
        (A name → [rank, in], B name → [out, rank]) with plain HF module names.
    """
    from palette_lens.models.blocks import linear_module_names, plain_decoder_layer

    prefix = model.decoder_layer_prefix(layer_index)
    layer = plain_decoder_layer(model, layer_index)
    a, b = {}, {}
    for name in linear_module_names(layer, prefix):
        w = layer.get_submodule(name[len(prefix) + 1 :]).weight
        a[name] = torch.randn(rank, w.shape[1], generator=generator) * scale
        b[name] = torch.randn(w.shape[0], rank, generator=generator) * scale
    return a, b
