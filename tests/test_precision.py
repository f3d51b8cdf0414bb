"""Precision and devices on tiny models: float32, bfloat16 and float16, dispatched and offloaded models.

Every low-precision test is parametrized by dtype (the dtype is in the test id) and compares with the same
random weights in float32, with a tolerance that depends on the dtype.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TOPICS, random_adapter, toy_prompts

from palette_lens.adapters.apply import adapters_applied, merged_hf_model
from palette_lens.cli import app as cli
from palette_lens.errors import AdapterMismatchError, ModelLoadError
from palette_lens.gate.config import GateConfig
from palette_lens.gate.training import fit_gate
from palette_lens.models.blocks import plain_tensor
from palette_lens.models.hooks import ablation_hook, addition_hook, projection_edit_hook
from palette_lens.models.loading import load_model, resolve_device, resolve_dtype, weights_digest, wrap_model
from palette_lens.models.tiny import tiny_chat_model, tiny_hf_model, tiny_tokenizer
from palette_lens.search.candidates import candidate_directions

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LOW = [torch.bfloat16, torch.float16]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


#: Tolerances per dtype, about 5x what the tiny model shows: first-token log-probs (max abs difference from
#: float32; measured bf16 0.0035, fp16 0.00045), candidate-direction 1 - cosine (7e-5, 8e-7) and the gate's
#: probability (max abs difference; 5e-4, 7e-5).
TOL = {
    torch.bfloat16: {"logprob": 0.02, "cosine": 5e-4, "gate": 3e-3},
    torch.float16: {"logprob": 3e-3, "cosine": 1e-5, "gate": 5e-4},
}


@pytest.fixture(scope="module")
def models():
    return {d: tiny_chat_model("qwen2", seed=0, dtype=d) for d in DTYPES}


@pytest.fixture(scope="module")
def prompts():
    return toy_prompts(TOPICS, 16)


# ---------------------------------------------------------------------- hook arithmetic
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_hooks_compute_in_float32_and_round_once(dtype):
    g = torch.Generator().manual_seed(0)
    act = (torch.randn(3, 5, 64, generator=g) * 4).to(dtype)
    direction = torch.randn(64, generator=g)
    unit = direction / direction.norm()
    a32 = act.float()
    expected = {
        "ablation": (a32 - (a32 @ unit)[..., None] * unit).to(dtype),
        "edit": (a32 - 2.5 * (a32 @ unit)[..., None] * unit).to(dtype),
        "addition": (a32 + 0.5 * direction).to(dtype),
    }
    got = {"ablation": ablation_hook(direction)(act), "edit": projection_edit_hook(direction, 2.5)(act),
           "addition": addition_hook(direction, 0.5)(act)}
    for kind in expected:
        assert got[kind].dtype == dtype
        assert torch.equal(got[kind], expected[kind]), kind
    # what survives of the direction is the single rounding's share, far below bf16's 0.6% of activation-dtype math
    left = (got["ablation"].float() @ unit).abs().max() / a32.norm(dim=-1).max()
    assert left < {torch.float32: 1e-6, torch.bfloat16: 2e-3, torch.float16: 3e-4}[dtype]


# ---------------------------------------------------------------------- merging
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_merges_add_in_float32_and_round_once(models, dtype):
    model = models[dtype]
    adapter = random_adapter(model, layer_index=1, seed=3, scale=0.05)
    merged = merged_hf_model(model, [adapter])
    before = {n: plain_tensor(model.hf_model, f"{n}.weight").detach().clone() for n in adapter.module_names}
    with adapters_applied(model, [adapter]):
        for name, delta in adapter.deltas().items():
            w = before[name]
            once = (w.float() + delta).to(dtype)
            assert torch.equal(merged.get_submodule(name).weight, once), name
            assert torch.equal(plain_tensor(model.hf_model, f"{name}.weight"), once), name
    for name, w in before.items():  # restored bit for bit
        assert torch.equal(plain_tensor(model.hf_model, f"{name}.weight"), w)


def test_adapters_keep_float32_factors_on_the_cpu(models):
    adapter = random_adapter(models[torch.bfloat16], seed=1)
    bf16 = type(adapter)(adapter.layer_index, {n: t.to(torch.bfloat16) for n, t in adapter.lora_A.items()},
                         adapter.lora_B, adapter.rank, adapter.alpha, adapter.meta, adapter.direction)
    assert {t.dtype for t in bf16.lora_A.values()} == {torch.float32}
    assert {t.device.type for t in bf16.lora_A.values()} == {"cpu"}


# ---------------------------------------------------------------------- fingerprint
def test_fingerprint_names_the_weights_across_dtypes_and_caches_keep_them_apart(models):
    prints = {d: m.fingerprint for d, m in models.items()}
    assert len(set(prints.values())) == 1, prints
    assert len({m.cache_key for m in models.values()}) == 3
    other = tiny_chat_model("qwen2", seed=5)
    assert other.fingerprint != prints[torch.float32]
    adapter = random_adapter(models[torch.float32], seed=2)  # baked on the float32 load
    for model in models.values():
        adapter.check_base(model)
    with pytest.raises(AdapterMismatchError):
        adapter.check_base(other)
    # a merged adapter changes values the digest reads, not the fingerprint's identity of the checkpoint
    merged = merged_hf_model(models[torch.float32], [adapter])
    assert weights_digest(merged) != models[torch.float32].weights_digest


# ---------------------------------------------------------------------- stages against float32
@pytest.mark.parametrize("dtype", LOW, ids=dtype_id)
def test_search_candidates_and_first_token_scores_match_float32(models, prompts, dtype):
    tol = TOL[dtype]
    ref, low = models[torch.float32], models[dtype]
    texts = prompts.part("cyber", "train")[:6] + prompts.part("harmless", "train")[:6]
    diff = (low.last_logits(texts) - ref.last_logits(texts)).abs().max()
    assert diff <= tol["logprob"], float(diff)
    c32 = candidate_directions(ref, prompts, "cyber", limit=8)
    clo = candidate_directions(low, prompts, "cyber", limit=8)
    for layer in c32.layers[1:]:  # layer 0 reads the same last template token in every prompt: no direction
        a, b = c32.vector(layer, -1).float(), clo.vector(layer, -1).float()
        assert 1 - torch.nn.functional.cosine_similarity(a, b, dim=0) <= tol["cosine"], layer


@pytest.mark.parametrize("dtype", LOW, ids=dtype_id)
def test_a_float32_gate_reads_a_low_precision_load_alike(models, prompts, dtype):
    gate = fit_gate(models[torch.float32], prompts, ["cyber"], GateConfig(layer=2))
    texts = [p for d in ("cyber", "violence", "harmless") for p in prompts.part(d, "val")]
    p32 = gate.probability(gate.features(models[torch.float32], texts))
    plow = gate.probability(gate.features(models[dtype], texts))  # the same checkpoint: the gate accepts it
    assert (plow - p32).abs().max() <= TOL[dtype]["gate"]


# ---------------------------------------------------------------------- loading, devices
def test_dtype_auto_loads_the_checkpoint_dtype(tmp_path):
    tok = tiny_tokenizer("qwen2")
    hf = tiny_hf_model("qwen2", len(tok)).to(torch.bfloat16)
    hf.config.dtype = torch.bfloat16
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype="auto", device="cpu")
    assert model.dtype == torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")


def test_devices_are_checked_before_any_work(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="not available here"):
        resolve_device("cuda:1")
    out = tmp_path / "run"
    code = cli.main(["run", "--target", "cyber", "--out", str(out), "--device", "cuda:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "not available here" in err
    assert not out.exists()


def test_an_offloaded_model_is_refused_with_what_to_do():
    from accelerate import cpu_offload

    tok = tiny_tokenizer("qwen2")
    hf = cpu_offload(tiny_hf_model("qwen2", len(tok)), execution_device="cpu")
    with pytest.raises(ModelLoadError, match="offloaded by accelerate.*device_map='auto' with max_memory"):
        wrap_model(hf, tok, "tiny", adapter_name="Qwen/Qwen2-0.5B-Instruct")
