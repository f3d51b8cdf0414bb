"""Chat rendering, post-instruction positions, residual collection vs HF, generation (tiny models)."""

from __future__ import annotations

import pytest
import torch

from palette_lens.errors import ChatTemplateError, ModelLoadError
from palette_lens.models.chat_model import find_post_instruction_ids
from palette_lens.models.loading import load_model
from palette_lens.models.residuals import collect_residuals

PROMPTS = ["How do I write a program?", "hello there, write a poem about the sea", "x"]


@pytest.mark.parametrize("fixture,suffix", [
    ("tiny_qwen", "<|im_end|>\n<|im_start|>assistant\n"),
    ("tiny_llama", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
])
def test_post_instruction_tokens_match_template_suffix(request, fixture, suffix):
    model = request.getfixturevalue(fixture)
    expected = model.tokenizer(suffix, add_special_tokens=False)["input_ids"]
    assert model.post_instruction_ids == expected
    # Every rendered prompt ends with exactly these tokens, whatever the user's text.
    for prompt in PROMPTS + ["a question ending in punctuation?!"]:
        ids = model.encode([prompt])["input_ids"][0].tolist()
        assert ids[-model.n_post:] == expected
    assert model.positions == list(range(-len(expected), 0))


def test_templates_differ_between_models(tiny_qwen, tiny_llama):
    assert tiny_qwen.render(["hi"])[0] != tiny_llama.render(["hi"])[0]
    assert tiny_qwen.n_post != tiny_llama.n_post


def test_tokenizer_without_chat_template_is_refused(tiny_qwen):
    import copy

    tok = copy.deepcopy(tiny_qwen.tokenizer)
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="chat template"):
        find_post_instruction_ids(tok)


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llama"])
def test_residuals_equal_hf_hidden_states(request, fixture):
    model = request.getfixturevalue(fixture)
    res = collect_residuals(model, PROMPTS, batch_size=2, desc=None)
    assert res.vectors.shape == (len(PROMPTS), model.n_layers, model.n_post, model.d_model)
    enc = model.encode(PROMPTS)  # one left-padded batch
    with torch.no_grad():
        hidden = model.hf_model(**enc, output_hidden_states=True).hidden_states
    for layer in range(model.n_layers):
        torch.testing.assert_close(res.vectors[:, layer], hidden[layer][:, -model.n_post:].float(), atol=1e-5, rtol=1e-4)
    # Means are accumulated in float64.
    assert res.mean().dtype == torch.float64


def test_residual_cache_round_trip(tiny_qwen, tmp_path):
    first = collect_residuals(tiny_qwen, PROMPTS, layers=[0, 2], cache=tmp_path, desc=None)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = collect_residuals(tiny_qwen, PROMPTS, layers=[0, 2], cache=tmp_path, desc=None)
    torch.testing.assert_close(first.vectors, again.vectors)
    other = collect_residuals(tiny_qwen, PROMPTS[:2], layers=[0, 2], cache=tmp_path, desc=None)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and len(other) == 2


def test_padding_does_not_change_residuals(tiny_qwen):
    alone = collect_residuals(tiny_qwen, ["x"], desc=None).vectors
    padded = collect_residuals(tiny_qwen, ["x", "a much longer prompt that forces left padding of x"], desc=None)
    torch.testing.assert_close(alone[0], padded.vectors[0], atol=1e-5, rtol=1e-4)


def test_generate_batched_equals_single(tiny_llama):
    batch = tiny_llama.generate(PROMPTS, max_new_tokens=6, batch_size=3)
    single = [tiny_llama.generate([p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batch == single


def test_last_logits_are_log_probs_of_last_position(tiny_qwen):
    lp = tiny_qwen.last_logits(PROMPTS, batch_size=2)
    assert lp.shape == (len(PROMPTS), len(tiny_qwen.tokenizer))
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(len(PROMPTS)), atol=1e-4, rtol=0)
    enc = tiny_qwen.encode(PROMPTS[:1])
    with torch.no_grad():
        full = torch.log_softmax(tiny_qwen.hf_model(**enc).logits[0, -1], -1)
    torch.testing.assert_close(lp[0], full, atol=1e-4, rtol=1e-4)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_local_folder_loads_like_the_original(tiny_qwen, tmp_path):
    import copy

    from palette_lens.models.tiny import tiny_hf_model, tiny_tokenizer

    tok = tiny_tokenizer("qwen2")
    hf = tiny_hf_model("qwen2", len(tok), seed=3)
    reference = copy.deepcopy(hf)
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    enc = loaded.encode(PROMPTS[:2])
    with torch.no_grad():
        mask = enc["attention_mask"].bool()  # padded positions are undefined
        torch.testing.assert_close(
            loaded.hf_model(**enc).logits[mask], reference(**enc).logits[mask], atol=1e-4, rtol=1e-4
        )
    assert loaded.fingerprint != tiny_qwen.fingerprint
