"""Reliability: atomic outputs under a full disk, caches checked by hash and rebuilt, adapter integrity,
safetensors-only loading, and deterministic results for a fixed seed."""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from helpers import random_adapter, toy_prompts
from safetensors.torch import save_file

from palette_lens.adapters.baked import load_adapter
from palette_lens.errors import AdapterMismatchError, IntegrityError, PaletteError
from palette_lens.models import embedded
from palette_lens.models.residuals import collect_residuals
from palette_lens.search.direction import Direction
from palette_lens.util.atomic import atomic_folder, atomic_write, atomic_write_text
from palette_lens.util.integrity import load_checked, save_checked

PACKAGE = Path(__file__).resolve().parents[1] / "palette_lens"


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# rank-2 random adapters: small folders for the integrity and disk-full tests
SMALL_ADAPTER = {"rank": 2, "alpha": 4.0, "scale": 0.1}


def only_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write(path: Path, text: str) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------- atomic writes, disk full
def fill_disk(monkeypatch) -> None:
    """From now on every text and safetensors write fails half way with ENOSPC (the bytes written stay)."""

    def write_text(self, data, *args, **kwargs):
        _write(self, data[: len(data) // 2])
        raise enospc()

    def partial_save_file(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)  # the real writer (imported above), then cut short
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise enospc()

    monkeypatch.setattr(Path, "write_text", write_text)
    for target in ("safetensors.torch.save_file", "palette_lens.adapters.baked.save_file",
                   "palette_lens.search.direction.save_file"):
        monkeypatch.setattr(target, partial_save_file)


def test_disk_full_keeps_the_previous_text_file(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "metrics.json", '{"old": 1}')
    fill_disk(monkeypatch)
    with pytest.raises(OSError) as info:
        atomic_write_text(path, json.dumps({"new": list(range(100))}))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)  # not the temporary file
    assert json.loads(path.read_bytes()) == {"old": 1}
    assert only_entries(tmp_path) == ["metrics.json"]  # no partial temporary file left


def test_disk_full_keeps_the_previous_direction(tmp_path, monkeypatch):
    Direction(torch.ones(8), 2, -1, "cyber").save(tmp_path)
    before = only_entries(tmp_path)
    fill_disk(monkeypatch)
    with pytest.raises(OSError):
        Direction(torch.zeros(8), 3, -1, "cyber").save(tmp_path)
    monkeypatch.undo()
    back = Direction.load(tmp_path / "cyber.json")
    assert torch.equal(back.vector, torch.ones(8)) and back.layer == 2
    assert only_entries(tmp_path) == before


def test_direction_pair_torn_by_a_crash_is_detected(tmp_path):
    """The vector file is replaced, then the process dies before the JSON is: the pair no longer matches."""
    Direction(torch.ones(8), 2, -1, "cyber").save(tmp_path)
    atomic_write(tmp_path / "cyber.safetensors", lambda p: save_file({"vector": torch.zeros(8)}, p))
    with pytest.raises(PaletteError, match="cyber.safetensors does not match the sha256 in cyber.json"):
        Direction.load(tmp_path / "cyber.json")


def test_disk_full_keeps_the_previous_adapter_folder(tiny_qwen, tmp_path, monkeypatch):
    old = random_adapter(tiny_qwen, seed=1, **SMALL_ADAPTER)
    old.save(tmp_path / "adapters" / "cyber")
    fill_disk(monkeypatch)
    with pytest.raises(OSError):
        random_adapter(tiny_qwen, seed=2, **SMALL_ADAPTER).save(tmp_path / "adapters" / "cyber")
    monkeypatch.undo()
    back = load_adapter(tmp_path / "adapters" / "cyber", tiny_qwen)
    n = back.module_names[0]
    assert torch.equal(back.lora_A[n], old.lora_A[n])
    assert only_entries(tmp_path / "adapters") == ["cyber"]


def test_disk_full_keeps_the_previous_cache_entry(tmp_path, monkeypatch):
    path = save_checked(tmp_path / "entry.safetensors", {"v": torch.arange(6.0)})
    fill_disk(monkeypatch)
    with pytest.raises(OSError):
        save_checked(path, {"v": torch.zeros(6)})
    monkeypatch.undo()
    tensors, _ = load_checked(path)
    assert torch.equal(tensors["v"], torch.arange(6.0)) and only_entries(tmp_path) == ["entry.safetensors"]


def test_interrupted_folder_write_keeps_the_previous_folder(tmp_path):
    def first(tmp: Path) -> None:
        _write(tmp / "a.txt", "one")

    atomic_folder(tmp_path / "out", first)

    def interrupted(tmp: Path) -> None:
        _write(tmp / "a.txt", "two")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_folder(tmp_path / "out", interrupted)
    assert (tmp_path / "out" / "a.txt").read_text() == "one"
    assert only_entries(tmp_path) == ["out"]


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        f = atomic_write(tmp_path / "f.json", lambda tmp: _write(Path(tmp), "{}"))
        d = atomic_folder(tmp_path / "d", lambda tmp: _write(tmp / "x", "1"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE(d.stat().st_mode) == 0o755  # not mkdtemp's 0700


# ---------------------------------------------------------------------- caches: checked by hash, rebuilt
def damage(path: Path, how: str) -> None:
    """Damage a safetensors file the ways a crash, a full disk or bit rot would."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif how == "flip_data":  # still a valid safetensors file: only the hash can tell
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:])
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncate", "empty", "garbage", "flip_data"])
def test_damaged_residual_cache_is_recomputed(tiny_qwen, tmp_path, how):
    prompts = ["hello there", "write a poem about the sea"]
    fresh = collect_residuals(tiny_qwen, prompts, layers=[1], cache=tmp_path, desc=None)
    (entry,) = tmp_path.glob("*.safetensors")
    damage(entry, how)
    again = collect_residuals(tiny_qwen, prompts, layers=[1], cache=tmp_path, desc=None)
    assert torch.equal(again.vectors, fresh.vectors)
    assert load_checked(entry) is not None  # rewritten whole
    assert only_entries(tmp_path) == [entry.name]


def test_residual_cache_entry_of_the_wrong_shape_is_recomputed(tiny_qwen, tmp_path):
    prompts = ["hello there", "write a poem about the sea"]
    fresh = collect_residuals(tiny_qwen, prompts, layers=[1], cache=tmp_path, desc=None)
    (entry,) = tmp_path.glob("*.safetensors")
    save_checked(entry, {"vectors": torch.zeros(1, 1, 1, 3)})  # intact, but not what the key promises
    assert torch.equal(collect_residuals(tiny_qwen, prompts, layers=[1], cache=tmp_path, desc=None).vectors,
                       fresh.vectors)


def _generations():
    from palette_lens.generation.greedy import Generations

    return Generations(["alpha answer", "I'm sorry"], [2, 2], torch.tensor([-1.5, 2.0]), {0: torch.randn(12)}, 0.5,
                       [[5, 6], [7, 8]], [True, False], ["generated", "generated"])


@pytest.mark.parametrize("how", ["truncate", "empty", "garbage", "flip_data", "edit_text"])
def test_damaged_generation_cache_is_not_trusted(tmp_path, how):
    from palette_lens.generation.greedy import load_generations, save_generations

    path = save_generations(tmp_path / "g.safetensors", _generations())
    back = load_generations(path)
    assert back.texts == ["alpha answer", "I'm sorry"] and torch.equal(back.first_scores, torch.tensor([-1.5, 2.0]))
    assert set(back.first_logprobs) == {0} and back.token_ids == [[5, 6], [7, 8]] and back.ended == [True, False]
    if how == "edit_text":  # the header stays valid JSON: only the hash can tell
        path.write_bytes(path.read_bytes().replace(b"alpha answer", b"alpha bnswer"))
    else:
        damage(path, how)
    assert load_generations(path) is None


# ---------------------------------------------------------------------- the embedded default model's cache
@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three small 'model parts' with their pinned hash, and a fake (fast) dequantization step."""
    import hashlib

    parts = []
    for i in range(3):
        p = tmp_path / "parts" / f"part{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i + 1]) * 1000)
        parts.append(p)
    sha = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    real_join = embedded.join_parts
    monkeypatch.setattr(embedded, "part_paths", lambda: parts)
    monkeypatch.setattr(embedded, "GGUF_SHA256", sha)
    monkeypatch.setattr(embedded, "join_parts", lambda p, dest: real_join(p, dest, sha))
    builds: list[int] = []

    def convert(gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "model.safetensors").write_bytes(gguf.read_bytes() * 2)
        (out / "config.json").write_text("{}")
        builds.append(1)

    monkeypatch.setattr(embedded, "convert_gguf_to_folder", convert)
    return parts, builds, tmp_path / "cache" / "model"


def test_default_model_cache_is_built_once_and_rebuilt_when_truncated(fake_parts):
    _, builds, target = fake_parts
    assert embedded.ensure_default_model(target) == target and len(builds) == 1
    embedded.ensure_default_model(target)
    assert len(builds) == 1  # valid: reused
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated cache file
    embedded.ensure_default_model(target)
    assert len(builds) == 2 and embedded.cache_is_valid(target, deep=True)


def test_default_model_cache_with_altered_bytes_is_rebuilt_when_verified(fake_parts):
    _, builds, target = fake_parts
    embedded.ensure_default_model(target)
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\xff" + data[1:])  # same size: only the hash can tell
    embedded.ensure_default_model(target)
    assert len(builds) == 1  # the quick check (sizes) runs on every load
    embedded.ensure_default_model(target, verify=True)
    assert len(builds) == 2 and embedded.cache_is_valid(target, deep=True)


def test_corrupt_parts_or_an_interrupted_build_leave_no_cache(fake_parts, monkeypatch):
    parts, _, target = fake_parts
    parts[1].write_bytes(b"\x00" * 999)  # a truncated download
    with pytest.raises(IntegrityError, match="corrupt or incomplete"):
        embedded.ensure_default_model(target)
    assert not target.exists() and only_entries(target.parent) == ["model.lock"]
    parts[1].write_bytes(bytes([2]) * 1000)

    def interrupted(gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "convert_gguf_to_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_default_model(target)
    assert not target.exists() and only_entries(target.parent) == ["model.lock"]


def test_a_killed_build_is_cleaned_up_by_the_next_one(fake_parts):
    _, builds, target = fake_parts
    stale = target.parent / f".building-{target.name}-x1y2"  # what SIGKILL during a build leaves
    (stale / "gguf").mkdir(parents=True)
    (stale / "gguf" / "model.gguf").write_bytes(b"half")
    other = target.parent / ".building-another-model-x1y2"  # another cache's build: not ours to remove
    other.mkdir()
    embedded.ensure_default_model(target)
    assert len(builds) == 1 and not stale.exists() and other.exists()


def test_joining_parts_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    parts = [_write(tmp_path / f"p{i}", "x" * 100) for i in range(3)]
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f, self.n = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, chunk):
            self.n += 1
            if self.n > 1:
                raise enospc()
            return self.f.write(chunk)

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullFile(f) if "w" in mode else f

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(OSError):
        embedded.join_parts(parts, tmp_path / "joined.gguf")
    monkeypatch.undo()
    assert not (tmp_path / "joined.gguf").exists()


def test_default_model_that_fails_to_load_is_verified_and_rebuilt(tiny_qwen, tmp_path, monkeypatch):
    from palette_lens.errors import ModelLoadError
    from palette_lens.models.copies import plain_hf_model
    from palette_lens.models.loading import load_model

    good, broken = tmp_path / "good", tmp_path / "broken"
    for folder in (good, broken):
        plain_hf_model(tiny_qwen).save_pretrained(folder)
        tiny_qwen.tokenizer.save_pretrained(folder)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    calls = []

    def ensure(cache_dir=None, verify=False):
        calls.append(verify)
        return good if verify else broken

    monkeypatch.setattr(embedded, "ensure_default_model", ensure)
    model = load_model()
    assert calls == [False, True] and model.n_layers == tiny_qwen.n_layers
    calls.clear()
    monkeypatch.setattr(embedded, "ensure_default_model", lambda cache_dir=None, verify=False: calls.append(1) or broken)
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model()
    assert len(calls) == 2  # one verification, then a clear error rather than a loop


# ---------------------------------------------------------------------- adapter integrity
def _edit_json(name: str, edit):
    def apply(folder: Path) -> None:
        path = folder / name
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))

    return apply


def _flip_last_byte(name: str):
    def apply(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))

    return apply


TAMPERING = {
    "fingerprint of another model": (_edit_json("palette_meta.json", lambda m: m.update(base_fingerprint="0" * 16)),
                                     AdapterMismatchError, "baked on base model .*0000000000000000"),
    "fingerprint removed": (_edit_json("palette_meta.json", lambda m: m.pop("base_fingerprint")),
                            PaletteError, "records no base-model fingerprint"),
    "block edited": (_edit_json("palette_meta.json", lambda m: m.update(block=0)), PaletteError, "not in block 0"),
    "block not an integer": (_edit_json("palette_meta.json", lambda m: m.update(block="1")),
                             PaletteError, "'block' .* must be a non-negative integer"),
    "modules edited": (_edit_json("palette_meta.json", lambda m: m.update(modules=m["modules"][:1])),
                       PaletteError, "modules listed"),
    "metadata not an object": (lambda f: (f / "palette_meta.json").write_text("[1, 2]"),
                               PaletteError, "must hold JSON objects"),
    "metadata truncated": (lambda f: (f / "palette_meta.json").write_text((f / "palette_meta.json").read_text()[:40]),
                           PaletteError, "corrupt or truncated"),
    "weights altered": (_flip_last_byte("adapter_model.safetensors"), PaletteError,
                        "adapter_model.safetensors does not match the sha256"),
    "rank edited": (_edit_json("adapter_config.json", lambda c: c.update(r=4)), PaletteError,
                    "adapter_config.json does not match the sha256"),
    "direction altered": (_flip_last_byte("direction.safetensors"), PaletteError,
                          "direction.safetensors does not match the sha256"),
    "direction removed": (lambda f: (f / "direction.safetensors").unlink(), PaletteError, "was modified"),
    "checksums malformed": (_edit_json("palette_meta.json", lambda m: m.update(checksums=["x"])),
                            PaletteError, "'checksums' .* is malformed"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_adapter_is_refused_with_a_clear_error(tiny_qwen, tmp_path, case):
    tamper, error, match = TAMPERING[case]
    folder = random_adapter(tiny_qwen, **SMALL_ADAPTER).save(tmp_path / "cyber")
    load_adapter(folder, tiny_qwen)  # intact: fine
    tamper(folder)
    with pytest.raises(error, match=match) as info:
        load_adapter(folder, tiny_qwen)
    assert "\n" not in str(info.value)


def test_adapter_without_checksums_still_loads_and_is_checked_by_shape(tiny_qwen, tmp_path):
    """Folders saved before checksums were recorded load; their metadata is still checked."""
    folder = random_adapter(tiny_qwen, **SMALL_ADAPTER).save(tmp_path / "cyber")
    _edit_json("palette_meta.json", lambda m: m.pop("checksums"))(folder)
    assert load_adapter(folder, tiny_qwen).rank == 2
    _edit_json("adapter_config.json", lambda c: c.update(r=4))(folder)
    with pytest.raises(PaletteError, match="not of rank 4"):
        load_adapter(folder, tiny_qwen)


def test_adapter_of_another_base_model_is_refused(tiny_qwen, tiny_llama, tmp_path):
    folder = random_adapter(tiny_qwen, **SMALL_ADAPTER).save(tmp_path / "cyber")
    with pytest.raises(AdapterMismatchError, match="baked on base model .*bake the adapter again"):
        load_adapter(folder, tiny_llama)


# ---------------------------------------------------------------------- safetensors only: no pickle anywhere
_UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Places in ``source`` that could unpickle (run code from) an untrusted file."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in _UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load") and not _is_true(kw.get("weights_only")):
                found.append(f"{where}: {name} without weights_only=True")
            elif name.endswith(("jit.load", "read_pickle", "pickle.load", "pickle.loads")):
                found.append(f"{where}: {name}")
            elif name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(
                kw.get("allow_pickle")
            ):
                found.append(f"{where}: {name}(allow_pickle=True)")
            if "trust_remote_code" in kw and not (isinstance(kw["trust_remote_code"], ast.Constant)
                                                   and kw["trust_remote_code"].value is False):
                found.append(f"{where}: trust_remote_code")
    return found


def test_the_scanner_finds_unsafe_loads():
    bad = (
        "import pickle\nfrom joblib import load\nimport torch, numpy as np\ntorch.load('x')\n"
        "torch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\nm.from_pretrained('x', trust_remote_code=True)\n"
    )
    assert len(unsafe_loads(bad)) == 6
    ok = "import torch, numpy as np\ntorch.load('x', weights_only=True)\nnp.load('x')\nload_file('x')\n"
    assert unsafe_loads(ok) == []


def test_package_never_loads_pickles():
    roots = [PACKAGE, PACKAGE.parent / "benchmarks"]
    files = [p for root in roots if root.is_dir() for p in sorted(root.rglob("*.py"))]
    assert len(files) > 20
    found = [hit for p in files for hit in unsafe_loads(p.read_text(encoding="utf-8"), str(p.relative_to(PACKAGE.parent)))]
    assert found == [], "unsafe loading (use safetensors / JSON, or torch.load(..., weights_only=True)):\n" + "\n".join(found)


# ---------------------------------------------------------------------- interrupted runs, determinism
_TOY_TOPICS = {"cyber": "malware virus network password attack", "violence": "attack blood heart kill",
               "harmless": "recipe pancakes poem sea wind light"}


def _stable(metrics: dict) -> dict:
    """metrics.json without the wall-clock numbers."""
    m = json.loads(json.dumps(metrics))
    m.pop("timings_s"), m.pop("latency_ms_per_token")
    for a in m["adapters"].values():
        a.pop("train_seconds")
    return m


def test_interrupted_run_leaves_no_summary_and_a_rerun_gives_identical_results(tiny_qwen, tmp_path, monkeypatch):
    """Same seed, same direction and metrics; an exception mid-pipeline leaves no metrics.json a rerun could
    trust (not even the previous run's), only complete files; the rerun starts clean and finishes."""
    from palette_lens.pipeline.config import PipelineConfig
    from palette_lens.pipeline.run import run_pipeline

    cfg = PipelineConfig(
        targets=("cyber",), eval_limit=3, harmless_limit=3, borderline_limit=None, max_new_tokens=4, batch_size=16,
        first_phase=2, search={"n_val": 2, "n_val_other": 1, "top_k": 2, "n_proxy": 2},
        bake={"steps": 3, "eval_every": 0, "max_per_group": 6, "val_per_domain": 2},
        latency_tokens=2, latency_batch=2, latency_repeats=1, steering_profiles="none", ablation_profiles="none",
        cache_generations=False,
    )
    out = tmp_path / "run"
    first = run_pipeline(tiny_qwen, toy_prompts(_TOY_TOPICS, 12, length=4), out, cfg, progress=False, report=False)
    direction = Direction.load(out / "directions" / "cyber.json")
    adapter = load_adapter(out / "adapters" / "cyber", tiny_qwen)
    assert json.loads(json.dumps(first.metrics)) == json.loads((out / "metrics.json").read_text())

    def killed(*args, **kwargs):
        raise RuntimeError("killed during the search")

    monkeypatch.setattr("palette_lens.pipeline.search_and_bake.search_direction", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(tiny_qwen, toy_prompts(_TOY_TOPICS, 12, length=4), out, cfg, progress=False, report=False)
    monkeypatch.undo()
    assert not (out / "metrics.json").exists() and not (out / "details.json").exists()  # not the old ones either
    assert (out / "baseline.json").is_file()  # stages finished before the interruption are complete files
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]  # nothing half-written

    rerun = run_pipeline(tiny_qwen, toy_prompts(_TOY_TOPICS, 12, length=4), out, cfg, progress=False, report=False)
    assert torch.equal(Direction.load(out / "directions" / "cyber.json").vector, direction.vector)
    again = load_adapter(out / "adapters" / "cyber", tiny_qwen)
    for n in adapter.module_names:
        assert torch.equal(again.lora_A[n], adapter.lora_A[n]) and torch.equal(again.lora_B[n], adapter.lora_B[n])
    assert _stable(rerun.metrics) == _stable(first.metrics)
    assert _stable(json.loads((out / "metrics.json").read_text())) == _stable(first.metrics)
