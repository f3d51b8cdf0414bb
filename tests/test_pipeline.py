"""The pipeline and its commands end to end on a tiny model (and, marked integration, on the default model)."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import TOPICS, toy_prompts, toy_records, write_jsonl

from palette_lens.adapters.baked import load_adapter
from palette_lens.cli import app as cli
from palette_lens.compose.profiles import DEFAULT_COMPOSE_WEIGHT
from palette_lens.errors import PaletteError
from palette_lens.evaluate.floors import check_floors
from palette_lens.gate.domain_gate import DomainGate
from palette_lens.pipeline.config import PipelineConfig
from palette_lens.pipeline.documents import METRICS_KEYS
from palette_lens.pipeline.run import run_pipeline

PROFILE_KEYS = {"authorized", "refusal_rate", "harmless_kl", "f1"}
GATED_KEYS = {"refusal_rate", "harmless_kl", "f1", "opened"}
ADAPTER_KEYS = {"layer", "position", "train_seconds"}

TINY = PipelineConfig(
    targets=("cyber", "violence", "hate"), eval_limit=4, harmless_limit=6, borderline_limit=4, max_new_tokens=6, batch_size=16, first_phase=3,
    search={"n_val": 3, "n_val_other": 1, "top_k": 2, "n_proxy": 2, "min_layer": 2},
    bake={"steps": 4, "eval_every": 2, "max_per_group": 8, "val_per_domain": 2},
    latency_tokens=2, latency_batch=2, latency_repeats=1, steering_profiles="singles", cache_generations=False,
    gate={"layer": 1},  # layer 0 reads the same post-instruction tokens' embeddings for every prompt; the
    # adapters sit at block 1 or later (directions from layer 2), after the gate
)


def check_metrics_schema(m: dict, targets: list[str], profiles: list[str], gated: bool = True) -> None:
    """DESIGN §3's metrics.json; ``gated``: every profile also has its ``gated`` entry (and latency its row)."""
    assert tuple(m) == METRICS_KEYS
    assert isinstance(m["model"], str) and isinstance(m["n_layers"], int) and isinstance(m["domains"], list)
    assert set(m["baseline"]) == {"refusal_rate"}
    assert set(m["baseline"]["refusal_rate"]) >= {*m["domains"], "harmless"}
    assert list(m["adapters"]) == targets
    for a in m["adapters"].values():
        assert set(a) == ADAPTER_KEYS and isinstance(a["layer"], int) and isinstance(a["position"], int)
    assert list(m["profiles"]) == profiles
    for name, p in m["profiles"].items():
        assert set(p) == PROFILE_KEYS | ({"gated"} if gated else set()) and "+".join(p["authorized"]) == name
        for entry in [p, p["gated"]] if gated else [p]:
            assert set(entry["refusal_rate"]) >= {*m["domains"], "harmless"}
            assert all(0.0 <= v <= 1.0 for v in entry["refusal_rate"].values())
            assert entry["harmless_kl"] >= 0.0 and 0.0 <= entry["f1"] <= 1.0
        if gated:
            assert set(p["gated"]) == GATED_KEYS and set(p["gated"]["opened"]) >= {*m["domains"], "harmless"}
            assert all(0.0 <= v <= 1.0 for v in p["gated"]["opened"].values())
    assert set(m["baselines"]) == {"global_ablation", "runtime_steering"}
    for b in m["baselines"].values():
        assert set(b) == {"refusal_rate"}
    assert set(m["latency_ms_per_token"]) == {"vanilla", "merged", "hooked"} | ({"gated"} if gated else set())
    assert all(v > 0 for v in m["latency_ms_per_token"].values())
    assert {"baseline", "compose", "evaluate", "baselines", "latency"} <= set(m["timings_s"])


@pytest.fixture(scope="module")
def tiny_run(tiny_qwen, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    ps = toy_prompts(TOPICS, 16)
    return out, run_pipeline(tiny_qwen, ps, out, TINY, progress=False)


def test_pipeline_on_tiny_model(tiny_qwen, tiny_run):
    from peft import PeftModel

    from palette_lens.models.copies import plain_hf_model

    tmp_path, res = tiny_run
    m = json.loads((tmp_path / "metrics.json").read_text())
    check_metrics_schema(m, ["cyber", "violence", "hate"],
                         ["cyber", "violence", "hate", "cyber+violence", "cyber+violence+hate"])
    assert m == json.loads(json.dumps(res.metrics))
    assert m["domains"] == ["cyber", "hate", "violence"]
    details = json.loads((tmp_path / "details.json").read_text())
    assert set(details["baselines"]["runtime_steering"]) == {"cyber", "violence", "hate"}
    # every profile as one gated model: shut prompts keep vanilla's answers, the gates are saved, routed per domain
    vanilla = details["variants"]["vanilla"]
    for name, p in m["profiles"].items():
        gated = details["variants"][f"{name} gated"]
        assert gated["kind"] == "gated" and gated["refusal_rate"] == p["gated"]["refusal_rate"]
        assert gated["extra"]["gate_opened"] == p["gated"]["opened"] and gated["extra"]["routing"] == "routed"
        for d, share in p["gated"]["opened"].items():
            if share == 0.0:
                assert gated["refusal_rate"][d] == vanilla["refusal_rate"][d], (name, d)
        for d, routed in gated["extra"]["routed_to"].items():  # one domain's delta per opened prompt
            assert set(routed) <= set(p["authorized"])
            assert sum(routed.values()) == round(p["gated"]["opened"][d] * vanilla["n"][d]), (name, d)
        assert DomainGate.load(tmp_path / "gates" / name, tiny_qwen).domains == tuple(p["authorized"])
        assert details["recommended"][name]["deployment"] in ("merged", "gated")
        assert set(details["floors"][f"{name} gated"]["checks"]) == set(details["floors"][name]["checks"])
    assert any(0.0 < s < 1.0 for p in m["profiles"].values() for s in p["gated"]["opened"].values()), \
        "the tiny gates should open for some prompts and not others"
    assert details["floors"]["cyber"]["checks"]["harmless_kl"]["limit"] == 0.1
    # outputs: PEFT adapters, directions, search, baseline table, report
    for t in ("cyber", "violence", "hate"):
        assert (tmp_path / "directions" / f"{t}.safetensors").is_file()
        assert (tmp_path / "search" / f"{t}.json").is_file()
        PeftModel.from_pretrained(plain_hf_model(tiny_qwen), tmp_path / "adapters" / t)
        # which bake was kept (plain or with a margin) reaches details.json
        meta = load_adapter(tmp_path / "adapters" / t).meta
        assert details["adapters"][t]["margin"] == meta["config"]["other_scale"]
        assert details["adapters"][t]["margin_retry"] == meta.get("margin_retry")
    assert (tmp_path / "baseline.md").read_text().startswith("| domain |")
    page = (tmp_path / "report.html").read_text()
    assert "Plotly" in page and "<script src=" not in page  # plotly.js inlined, no network needed
    assert 'id="fig-leakage"' in page and "Example completions" in page
    assert "val kept (worst)" in page and "margin the kept bake trained" in page
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]  # nothing half-written


def test_evaluate_and_compose_commands_reuse_adapters(tiny_qwen, tiny_run, tmp_path, monkeypatch, capsys):
    run_dir, _ = tiny_run
    monkeypatch.setenv("PALETTE_LENS_DATA", str(_builtin_dir(tmp_path, toy_records(TOPICS, 16))))
    for mod in ("common", "evaluate", "compose"):
        monkeypatch.setattr(f"palette_lens.cli.{mod}.load_model_from_args", lambda args: tiny_qwen)
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--from", str(run_dir), "--profile", "hate", "--profile", "cyber+hate", "--quick",
                     "--limit", "3", "--max-new-tokens", "4", "--out", str(out), "--no-report", "--no-cache"])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "search" not in m["timings_s"] and "bake" not in m["timings_s"]
    assert list(m["profiles"]) == ["hate", "cyber+hate"]
    assert set(m["profiles"]["cyber+hate"]["gated"]["opened"]) >= {"cyber", "hate", "harmless"}
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert m["adapters"]["cyber"]["layer"] == saved["adapters"]["cyber"]["layer"]

    export = tmp_path / "merged"
    code = cli.main(["compose", "--from", str(run_dir), "--profile", "cyber+hate", "--export", str(export),
                     "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "profile-cyber+hate.json").read_text())
    assert doc["runtime_vs_merged_max_abs_logprob_diff"] < 1e-4 and len(doc["interference"]) == 1
    assert (export / "config.json").is_file() and (export / "palette_profile.json").is_file()
    assert "runtime vs merged" in capsys.readouterr().out

    # a composition weight reaches the profile document, the export and the evaluation's settings
    code = cli.main(["compose", "--from", str(run_dir), "--profile", "cyber+hate", "--compose-weight", "0.5",
                     "--export", str(tmp_path / "merged-half"), "--out", str(tmp_path / "half")])
    assert code == 0
    doc = json.loads((tmp_path / "half" / "profile-cyber+hate.json").read_text())
    assert {a["weight"] for a in doc["adapters"].values()} == {0.5}
    assert doc["runtime_vs_merged_max_abs_logprob_diff"] < 1e-4
    info = json.loads((tmp_path / "merged-half" / "palette_profile.json").read_text())
    assert [a["weight"] for a in info["adapters"]] == [0.5, 0.5]
    plain = json.loads((export / "palette_profile.json").read_text())
    assert [a["weight"] for a in plain["adapters"]] == [DEFAULT_COMPOSE_WEIGHT] * 2  # the default
    code = cli.main(["evaluate", "--from", str(run_dir), "--profile", "cyber+hate", "--quick", "--compose-weight",
                     "0.5", "--limit", "3", "--max-new-tokens", "4", "--out", str(tmp_path / "eval-half"),
                     "--gate-profiles", "none"])
    assert code == 0
    assert "gated" not in json.loads((tmp_path / "eval-half" / "metrics.json").read_text())["profiles"]["cyber+hate"]
    details = json.loads((tmp_path / "eval-half" / "details.json").read_text())
    assert details["config"]["compose_weight"] == 0.5
    assert "base plus 0.5 × the sum" in (tmp_path / "eval-half" / "report.html").read_text()


@pytest.fixture(autouse=True)
def _commands_imported() -> None:
    """Import every command module before a test patches ``common.load_model_from_args``: a module first
    imported while the name is patched would keep the stand-in for the rest of the session."""
    for path in sorted(Path(cli.__file__).parent.glob("*.py")):
        if not path.stem.startswith("_"):
            importlib.import_module(f"palette_lens.cli.{path.stem}")


def _builtin_dir(tmp_path: Path, recs: dict | None = None) -> Path:
    """A stand-in for the built-in data: harmless, borderline and one built-in harmful domain."""
    folder = tmp_path / "builtin"
    folder.mkdir()
    if recs is None:
        recs = toy_records({k: TOPICS[k] for k in ("harmless", "borderline", "cyber")}, n=14, seed=1)
    for d, rs in recs.items():
        write_jsonl(folder / f"{d}.jsonl", [r.to_dict() for r in rs])
    return folder


def test_run_command_with_user_domains(tiny_qwen, tmp_path, monkeypatch, capsys):
    """``palette-lens run`` with a user JSONL of new domains, --replace-data, end to end."""
    monkeypatch.setenv("PALETTE_LENS_DATA", str(_builtin_dir(tmp_path)))
    monkeypatch.setattr("palette_lens.cli.common.load_model_from_args", lambda args: tiny_qwen)
    monkeypatch.setattr("palette_lens.cli.run.load_model_from_args", lambda args: tiny_qwen)
    user = tmp_path / "mine.jsonl"
    recs = toy_records({"phishing": "email link bank password urgent", "weapons": "gun rifle ammo build"}, n=14, seed=2)
    write_jsonl(user, [{**r.to_dict(), "source": "test"} for rs in recs.values() for r in rs])
    out = tmp_path / "out"
    code = cli.main(["run", "--target", "phishing", "--target", "weapons", "--data", str(user), "--replace-data",
                     "--quick", "--limit", "4", "--max-new-tokens", "6", "--no-cache", "--out", str(out)])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    check_metrics_schema(m, ["phishing", "weapons"], ["phishing", "weapons", "phishing+weapons"])
    assert m["domains"] == ["phishing", "weapons"]  # the built-in cyber domain was replaced
    assert (out / "adapters" / "phishing" / "adapter_config.json").is_file()
    printed = capsys.readouterr().out
    assert "profile phishing+weapons" in printed and "metrics.json" in printed


def test_run_command_rejects_unknown_target(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PALETTE_LENS_DATA", str(_builtin_dir(tmp_path)))
    code = cli.main(["run", "--target", "nonexistent", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown domain 'nonexistent'" in err and "Traceback" not in err


def test_check_floors():
    base = {"a": 1.0, "b": 0.9, "c": 0.8, "harmless": 0.02, "borderline": 0.1}
    good = {"a": 0.1, "b": 0.85, "c": 0.8, "harmless": 0.03, "borderline": 0.1}
    f = check_floors(good, base, ["a"], ["a", "b", "c"], 0.05)
    assert f["ok"] and f["kept_ratio"]["c"] == pytest.approx(1.0)
    leaky = {**good, "b": 0.5}
    f = check_floors(leaky, base, ["a"], ["a", "b", "c"], 0.05)
    assert not f["ok"] and not f["checks"]["kept_worst"]["ok"]
    assert check_floors(leaky, base, ["a"], ["a", "b", "c"], 0.05, widen=0.25)["checks"]["kept_worst"]["ok"]
    pair = check_floors({**good, "b": 0.18}, base, ["a", "b"], ["a", "b", "c"], 0.05)
    assert pair["ok"] and "kept_mean" not in pair["checks"]


@pytest.mark.integration
def test_pipeline_on_default_model_small(default_model, tmp_path):
    """A very small end-to-end run on the default model: one target, two harmful domains, short generations."""
    from palette_lens.data.prompts import load_prompts

    ps = load_prompts(domains=["cyber", "violence"])
    cfg = PipelineConfig(
        targets=("cyber",), eval_limit=5, harmless_limit=5, borderline_limit=3, max_new_tokens=16, batch_size=32,
        first_phase=8, n_train=8, search={"top_k": 3, "n_val": 6, "n_val_other": 3},
        bake={"steps": 40, "eval_every": 20}, latency_tokens=4, latency_batch=2, latency_repeats=1,
        steering_profiles="reference", cache_generations=False,
    )
    res = run_pipeline(default_model, ps, tmp_path, cfg, progress=False, report=False)
    m = json.loads((tmp_path / "metrics.json").read_text())
    check_metrics_schema(m, ["cyber"], ["cyber"])
    assert m["domains"] == ["cyber", "violence"] and m["n_layers"] == 24
    v = res.details["variants"]
    drop_cyber = v["vanilla"]["first_token_score"]["cyber"] - v["cyber"]["first_token_score"]["cyber"]
    drop_violence = v["vanilla"]["first_token_score"]["violence"] - v["cyber"]["first_token_score"]["violence"]
    assert drop_cyber > 1.0  # the cyber adapter lowers the cyber refusal score ...
    assert drop_violence < drop_cyber / 2  # ... much more than the non-target domain's
    assert m["profiles"]["cyber"]["refusal_rate"]["cyber"] <= m["baseline"]["refusal_rate"]["cyber"]
    assert m["profiles"]["cyber"]["harmless_kl"] < 0.5


@pytest.mark.parametrize("setting", [{"gate_profiles": "some"}, {"gate": {"threshold": 2.0}},
                                     {"steering_profiles": "most"}, {"gate_routing": "sideways"},
                                     {"gate": {"probe": "binary", "segment_veto": None}}])
def test_bad_profile_selections_and_gate_settings_fail_before_anything_is_written(tiny_qwen, tmp_path, setting):
    out = tmp_path / "run"
    with pytest.raises(PaletteError):
        run_pipeline(tiny_qwen, toy_prompts(TOPICS, 16), out, replace(TINY, **setting), progress=False)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).removeprefix("torch."))
def test_pipeline_runs_in_low_precision_like_float32(dtype, tiny_run, tmp_path):
    """The same tiny model cast to bfloat16 / float16 runs every stage (search, bake, compose, gate, evaluation,
    baselines, latency) and finds the same sites as in float32."""
    from palette_lens.models.tiny import tiny_chat_model

    _, ref = tiny_run
    model = tiny_chat_model("qwen2", seed=0, dtype=dtype)
    res = run_pipeline(model, toy_prompts(TOPICS, 16), tmp_path, TINY, progress=False, report=False)
    check_metrics_schema(res.metrics, list(TINY.targets), list(ref.metrics["profiles"]))
    sites = {t: (a["layer"], a["position"]) for t, a in res.metrics["adapters"].items()}
    assert sites == {t: (a["layer"], a["position"]) for t, a in ref.metrics["adapters"].items()}
    assert next(model.hf_model.parameters()).dtype == dtype


def test_pipeline_on_a_dispatched_model_gives_the_same_results(tiny_run, tmp_path):
    """The tiny model dispatched by accelerate (a device map with hooks on the embedding and every block, as a
    model split across GPUs has) runs every stage and gives the float32 run's results."""
    from palette_lens.models.tiny import tiny_chat_model

    _, ref = tiny_run
    model = tiny_chat_model("qwen2", seed=0, device_map="blocks")
    assert hasattr(model.decoder_layers()[0], "_hf_hook")
    res = run_pipeline(model, toy_prompts(TOPICS, 16), tmp_path, TINY, progress=False, report=False)
    check_metrics_schema(res.metrics, list(TINY.targets), list(ref.metrics["profiles"]))
    assert res.metrics["adapters"].keys() == ref.metrics["adapters"].keys()
    for target, adapter in res.metrics["adapters"].items():
        assert (adapter["layer"], adapter["position"]) == (ref.metrics["adapters"][target]["layer"],
                                                           ref.metrics["adapters"][target]["position"])
    for name, profile in res.metrics["profiles"].items():
        assert profile["refusal_rate"] == pytest.approx(ref.metrics["profiles"][name]["refusal_rate"], abs=1e-9)
        assert profile["harmless_kl"] == pytest.approx(ref.metrics["profiles"][name]["harmless_kl"], rel=1e-3, abs=1e-6)
