"""The run shipped inside the package (palette_lens/pipeline/builtin_run): intact, checked, and reproducible.

Fast tests check the manifest, the hash check (a changed or missing file is refused) and the refusal of
another model. Integration tests read it for the default model, and compare it with what the code produces
today: ``palette-lens demo --quick`` (the session's ``quick_demo_dir``) searches and bakes the same targets
with the same settings and seeds from scratch, so its adapters must match the shipped ones.

Tolerance of the re-bake comparison: the same (layer, position) per domain, directions with cosine
≥ 0.9999, and for every adapted module ‖ΔW_rebaked − ΔW_shipped‖ ≤ 1e-3·‖ΔW_shipped‖ (on the machine that made
them the two are bit-identical; the margin covers float reductions that differ between CPUs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from palette_lens.adapters.baked import load_adapter
from palette_lens.data.prompts import load_prompts
from palette_lens.errors import AdapterMismatchError
from palette_lens.gate.config import GateConfig
from palette_lens.pipeline import builtin as builtin_mod
from palette_lens.pipeline import runs as runs_mod
from palette_lens.pipeline.builtin import (
    MANIFEST_FILE,
    BuiltinRunError,
    builtin_run_dir,
    is_builtin,
    read_manifest,
    verify_builtin_run,
)
from palette_lens.pipeline.config import PipelineConfig
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.pipeline.runs import load_run
from palette_lens.search.direction import Direction

TARGETS = ["cyber", "disinformation", "hate"]
PROFILES = ["cyber", "disinformation", "hate", "cyber+disinformation", "cyber+disinformation+hate"]
RELATIVE_TOLERANCE = 1e-3


# ---------------------------------------------------------------------- fast
def test_manifest_lists_every_shipped_file_and_the_hashes_hold():
    manifest = verify_builtin_run()
    root = builtin_run_dir()
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*")
               if p.is_file() and p.name != MANIFEST_FILE and "__pycache__" not in p.parts}
    assert set(manifest["files"]) == on_disk
    assert manifest["targets"] == TARGETS
    run = RunFolder(root)
    assert run.adapter_domains() == TARGETS
    for d in TARGETS:
        size = (run.adapter_dir(d) / "adapter_model.safetensors").stat().st_size
        assert 100_000 < size < 2_000_000, (d, size)
        assert run.search_json(d).is_file() and run.direction_json(d).is_file() and run.bake_json(d).is_file()
    assert all(run.gate_dir(p).is_dir() for p in PROFILES)
    assert manifest["settings"]["same_as"] == "palette-lens demo --quick"


def test_the_shipped_gates_were_trained_with_todays_settings_and_gate_pool():
    """A change to the gate's defaults or to data/gate/ must come with re-trained shipped gates."""
    settings = read_manifest()["settings"]
    expected = json.loads(json.dumps(dataclasses.asdict(GateConfig(**PipelineConfig.quick_preset().gate))))
    assert settings["gate"] == expected
    assert settings["gate_pool_hash"] == load_prompts().gate_pool_hash()
    for p in PROFILES:
        meta = json.loads((RunFolder(builtin_run_dir()).gate_dir(p) / "gate.json").read_text())
        config = meta["calibration"]["config"]
        assert {k: v for k, v in config.items() if k != "layer"} == {k: v for k, v in expected.items() if k != "layer"}
        n_pool = sum(len(load_prompts().part(d, "gate")) for d in p.split("+"))
        assert meta["calibration"]["n_open"] >= 2 * 20 * len(p.split("+")) + n_pool, p  # split, framed, pool


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of the shipped run that load_run() / verify_builtin_run() read instead of the real one."""
    copy = tmp_path / "builtin_run"
    shutil.copytree(builtin_run_dir(), copy)
    monkeypatch.setattr(builtin_mod, "builtin_run_dir", lambda: copy)
    monkeypatch.setattr(runs_mod, "builtin_run_dir", lambda: copy)
    return copy


def test_a_changed_file_is_refused_before_anything_is_read(shipped_copy):
    weights = shipped_copy / "adapters" / "hate" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BuiltinRunError, match=r"adapters/hate/adapter_model.safetensors \(changed\).*reinstall"):
        load_run()


def test_a_missing_file_is_refused(shipped_copy):
    (shipped_copy / "gates" / "cyber" / "gate.json").unlink()
    with pytest.raises(BuiltinRunError, match=r"gates/cyber/gate.json \(missing\)"):
        verify_builtin_run()


def test_a_missing_manifest_says_to_reinstall(shipped_copy):
    (shipped_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BuiltinRunError, match="reinstall"):
        load_run("builtin")


def test_another_model_is_refused_with_what_to_do(tiny_qwen):
    with pytest.raises(AdapterMismatchError, match=r"embedded default model.*run_dir=''"):
        load_run("builtin", tiny_qwen)


def test_builtin_names():
    assert is_builtin(None) and is_builtin("builtin") and is_builtin(builtin_run_dir())
    assert not is_builtin("runs/demo") and not is_builtin("")


# ---------------------------------------------------------------------- integration
@pytest.mark.integration
def test_load_run_reads_the_shipped_run_for_the_default_model(default_model):
    run = load_run(model=default_model)
    assert run.folder == builtin_run_dir() and run.domains == TARGETS and not run.made
    for d in TARGETS:
        adapter, direction = run.adapters[d], run.directions[d]
        assert adapter.layer == direction.layer and adapter.domain == d
        assert run.bake_report(d)["history"], d
    for p in PROFILES:
        gate = run.gate(p, default_model)
        assert gate is not None and "+".join(gate.domains) == p
    assert run.gate("hate+cyber") is None  # not a shipped profile
    assert read_manifest()["fingerprint"] == default_model.fingerprint


@pytest.mark.integration
def test_quick_demo_rebakes_the_shipped_adapters(quick_demo_dir, default_model):
    shipped, rebaked = RunFolder(builtin_run_dir()), RunFolder(quick_demo_dir)
    assert rebaked.adapter_domains() == TARGETS
    for d in TARGETS:
        a = load_adapter(shipped.adapter_dir(d), default_model)
        b = load_adapter(rebaked.adapter_dir(d), default_model)
        assert (a.layer, a.meta["position"]) == (b.layer, b.meta["position"]), d
        da, db = Direction.load(shipped.direction_json(d)), Direction.load(rebaked.direction_json(d))
        cosine = torch.nn.functional.cosine_similarity(da.vector.float(), db.vector.float(), dim=0)
        assert cosine >= 0.9999, (d, float(cosine))
        deltas_a, deltas_b = a.deltas(), b.deltas()
        assert deltas_a.keys() == deltas_b.keys()
        for name, delta in deltas_a.items():
            rel = float((deltas_b[name].float() - delta.float()).norm() / delta.float().norm())
            assert rel <= RELATIVE_TOLERANCE, (d, name, rel)
    # the quick demo's gate (its reference profile) is the shipped one too
    ship_gate = json.loads((shipped.gate_dir("cyber") / "gate.json").read_text())
    demo_gate = json.loads((rebaked.gate_dir("cyber") / "gate.json").read_text())
    assert ship_gate["threshold"] == pytest.approx(demo_gate["threshold"], rel=RELATIVE_TOLERANCE)
