"""Bad input at the command line: one line on stderr, a non-zero exit code, no traceback, inputs untouched."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_adapter, write_jsonl

from palette_lens.cli import app as cli

COMMANDS = ("common", "run", "search", "bake", "baseline", "evaluate", "compose", "leakage")
WORDS = {
    "cyber": "malware virus network password attack",
    "violence": "attack blood fight kill",
    "harmless": "recipe pancakes poem sea wind light",
}


# ---------------------------------------------------------------------- helpers
def records(domain: str, n: int) -> list[dict]:
    words = WORDS.get(domain, "alpha beta gamma").split()
    return [{"prompt": f"{domain} {words[i % len(words)]} {words[(3 * i) % len(words)]} {i}", "domain": domain}
            for i in range(n)]


@pytest.fixture
def builtin(tmp_path, monkeypatch) -> Path:
    """Built-in data stand-in: cyber, violence and harmless, 8 prompts each."""
    folder = tmp_path / "builtin"
    folder.mkdir()
    for d in WORDS:
        write_jsonl(folder / f"{d}.jsonl", records(d, 8))
    monkeypatch.setenv("PALETTE_LENS_DATA", str(folder))
    return folder


def use_model(monkeypatch, model=None) -> None:
    """Every command gets ``model``; without one, loading a model fails the test (errors must come first)."""

    def load(args):
        if model is None:
            pytest.fail("the model was loaded although the input was already known to be bad")
        return model

    modules = [importlib.import_module(f"palette_lens.cli.{m}") for m in COMMANDS]  # before patching:
    for module in modules:  # a module imported later would copy (and keep) the patched name from common
        monkeypatch.setattr(module, "load_model_from_args", load)


def snapshot(*paths: Path) -> dict[str, tuple[str, int]]:
    """sha256 and modification time of every file under ``paths``."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
    return out


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, match: str, expected_code: int = 2) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("palette-lens: error: "), err
    assert match in lines[0], err


@pytest.fixture(scope="module")
def model_folder(tiny_qwen, tmp_path_factory) -> Path:
    """The tiny Qwen model saved as a Hugging Face folder."""
    from palette_lens.models.copies import plain_hf_model

    folder = tmp_path_factory.mktemp("model") / "tiny-qwen"
    plain_hf_model(tiny_qwen).save_pretrained(folder)
    tiny_qwen.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_folder(tiny_qwen, tmp_path_factory) -> Path:
    """A run folder holding ``adapters/cyber/`` baked (randomly) for the tiny Qwen model."""
    run = tmp_path_factory.mktemp("run")
    random_adapter(tiny_qwen, rank=2, alpha=4.0, scale=0.1).save(run / "adapters" / "cyber")
    return run


# ---------------------------------------------------------------------- unknown domain
@pytest.mark.parametrize("argv", [
    ["run", "--target", "nope"],
    ["search", "--target", "nope"],
    ["bake", "--target", "nope"],
    ["baseline", "--domains", "cyber", "nope"],
    ["demo", "--target", "nope"],
])
def test_unknown_domain(builtin, tmp_path, monkeypatch, capsys, argv):
    use_model(monkeypatch)
    before = snapshot(builtin)
    code, err = run_cli(capsys, *argv, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "unknown domain 'nope'; known domains: cyber, violence, harmless")
    assert snapshot(builtin) == before and not (tmp_path / "out").exists()


def test_unknown_domain_in_a_profile(builtin, adapter_folder, tmp_path, monkeypatch, capsys):
    use_model(monkeypatch)  # reported before the model is loaded
    code, err = run_cli(capsys, "compose", "--from", adapter_folder, "--profile", "cyber+nope", "--out", tmp_path)
    assert_one_line_error(code, err, "profile 'cyber+nope' needs nope, which has no adapter here (adapters: cyber)")


# ---------------------------------------------------------------------- malformed, empty, unusable data
MALFORMED = {
    "not JSON": (b'{"prompt": "a b", "domain": "x"}\n{"prompt": "a", \n', "2: not valid JSON"),
    "not an object": (b'\n\n[1, 2]\n', "3: expected a JSON object"),
    "prompt missing": (b'{"prompt": "a b", "domain": "x"}\n{"domain": "x"}\n', "2: 'prompt' must be"),
    "prompt blank": (b'{"prompt": "   ", "domain": "x"}\n', "1: 'prompt' must be"),
    "domain not a string": (b'{"prompt": "a", "domain": 3}\n', "1: 'domain' must be"),
    "invalid UTF-8": (b'{"prompt": "a", "domain": "x"}\n{"prompt": "caf\xe9", "domain": "x"}\n', "2: not valid UTF-8"),
    "lone surrogate": (b'{"prompt": "a \\ud800", "domain": "x"}\n', "1: 'prompt' and 'domain' must be valid Unicode"),
    "domain is a path": (b'{"prompt": "a", "domain": "../../etc"}\n', "1: domain '../../etc' is not allowed"),
    "domain with a plus": (b'{"prompt": "a", "domain": "chem+bio"}\n', "1: domain 'chem+bio' is not allowed"),
    "empty file": (b"", "the file holds no records"),
    "blank lines only": (b"\n  \n\n", "the file holds no records"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_data_file(builtin, tmp_path, monkeypatch, capsys, case):
    content, match = MALFORMED[case]
    path = tmp_path / "mine.jsonl"
    path.write_bytes(content)
    use_model(monkeypatch)
    before = snapshot(path, builtin)
    code, err = run_cli(capsys, "run", "--target", "cyber", "--data", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, f"{path}" + (f":{match}" if match[0].isdigit() else f": {match}"))
    assert snapshot(path, builtin) == before and not (tmp_path / "out").exists()


def test_missing_data_file_or_a_folder(builtin, tmp_path, monkeypatch, capsys):
    use_model(monkeypatch)
    code, err = run_cli(capsys, "search", "--target", "cyber", "--data", tmp_path / "nope.jsonl")
    assert_one_line_error(code, err, "nope.jsonl: no such data file")
    code, err = run_cli(capsys, "search", "--target", "cyber", "--data", tmp_path)
    assert_one_line_error(code, err, f"--data {tmp_path} is a folder; --data takes JSONL files, e.g. --data {tmp_path}/*.jsonl")


def test_domain_with_too_few_prompts_to_split(builtin, tmp_path, monkeypatch, capsys):
    path = write_jsonl(tmp_path / "mine.jsonl", records("tiny", 3))
    use_model(monkeypatch)  # reported before the model is loaded
    before = snapshot(path)
    code, err = run_cli(capsys, "run", "--target", "cyber", "--data", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "domain 'tiny' has 3 prompts; at least 5 are needed")
    assert snapshot(path) == before


def test_missing_builtin_harmless_prompts(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "builtin"
    folder.mkdir()
    write_jsonl(folder / "cyber.jsonl", records("cyber", 8))
    monkeypatch.setenv("PALETTE_LENS_DATA", str(folder))
    use_model(monkeypatch)
    mine = write_jsonl(tmp_path / "mine.jsonl", records("cyber", 8))
    code, err = run_cli(capsys, "run", "--target", "cyber", "--data", mine, "--replace-data", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "no 'harmless' prompts found")


# ---------------------------------------------------------------------- models
def test_model_path_that_does_not_exist(builtin, tmp_path, capsys):
    for model, match in [(tmp_path / "nope" / "model", "model path does not exist"),
                         (tmp_path / "nope.gguf", "GGUF file not found"),
                         (tmp_path, "is not a Hugging Face model folder (no config.json)")]:
        code, err = run_cli(capsys, "search", "--target", "cyber", "--model", model, "--out", tmp_path / "out")
        assert_one_line_error(code, err, match)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["config garbage", "config without model type", "weights truncated", "no weights"])
def test_damaged_model_folder(builtin, model_folder, tmp_path, capsys, damage):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    if damage == "config garbage":
        (folder / "config.json").write_text("{not json")
    elif damage == "config without model type":
        (folder / "config.json").write_text("{}")
    elif damage == "weights truncated":
        w = folder / "model.safetensors"
        w.write_bytes(w.read_bytes()[:300])
    else:
        (folder / "model.safetensors").unlink()
    before = snapshot(folder)
    code, err = run_cli(capsys, "baseline", "--model", folder, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "could not load")
    assert snapshot(folder) == before and not (tmp_path / "out").exists()


def test_model_without_chat_template(builtin, model_folder, tmp_path, capsys):
    folder = tmp_path / "base-model"
    shutil.copytree(model_folder, folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "baseline", "--model", folder, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "the tokenizer has no chat template")


@pytest.mark.parametrize("argv,match", [
    (["baseline", "--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    (["bake", "--target", "cyber", "--steps", "0"], "argument --steps: must be at least 1, not 0"),
    (["bake", "--target", "cyber", "--lr", "nan"], "argument --lr: must be a finite number above 0, not nan"),
    (["search", "--target", "cyber", "--alpha", "1.5"], "argument --alpha: must be between 0 and 1, not 1.5"),
    (["search", "--target", "cyber", "--views-every", "0"], "argument --views-every: must be at least 1"),
    (["run", "--target", "cyber", "--limit", "-3"], "argument --limit: must be at least 1, not -3"),
    (["baseline", "--limit", "many"], "argument --limit: expected a whole number, not 'many'"),
    (["bake", "--target", "cyber", "--mix", "1:1:1"], "argument --mix: must be four non-negative weights"),
    (["bake", "--target", "cyber", "--mix", "0:1:1:1"], "with target > 0, not '0:1:1:1'"),
    (["bake", "--target", "cyber", "--mix", "1:-1:1:1"], "argument --mix: must be four non-negative weights"),
    (["demo", "--compose-weight", "0"], "argument --compose-weight: must be a number in (0, 2], not 0"),
    (["run", "--target", "cyber", "--compose-weight", "3"], "argument --compose-weight: must be a number in (0, 2]"),
    (["compose", "--compose-weight", "nan"], "argument --compose-weight: must be a number in (0, 2], not nan"),
])
def test_bad_option_values_are_usage_errors(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and match in err and "Traceback" not in err


# ---------------------------------------------------------------------- adapters, directions, search output
def test_adapter_for_another_base_model(builtin, adapter_folder, tiny_llama, tmp_path, monkeypatch, capsys):
    use_model(monkeypatch, tiny_llama)
    before = snapshot(adapter_folder)
    code, err = run_cli(capsys, "compose", "--from", adapter_folder, "--out", tmp_path)
    assert_one_line_error(code, err, "was baked on base model")
    code, err = run_cli(capsys, "evaluate", "--from", adapter_folder, "--out", tmp_path / "eval")
    assert_one_line_error(code, err, "was baked on base model")
    assert snapshot(adapter_folder) == before and not (tmp_path / "eval").exists()


def test_tampered_or_truncated_adapter(builtin, adapter_folder, tiny_qwen, tmp_path, monkeypatch, capsys):
    use_model(monkeypatch, tiny_qwen)
    run = tmp_path / "run"
    shutil.copytree(adapter_folder, run)
    meta_path = run / "adapters" / "cyber" / "palette_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["block"] = 0
    meta_path.write_text(json.dumps(meta))
    code, err = run_cli(capsys, "compose", "--from", run, "--out", tmp_path)
    assert_one_line_error(code, err, "is not in block 0")
    shutil.rmtree(run)
    shutil.copytree(adapter_folder, run)
    weights = run / "adapters" / "cyber" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, err = run_cli(capsys, "compose", "--from", run, "--out", tmp_path)
    assert_one_line_error(code, err, "does not match the sha256")


def test_corrupt_direction_and_search_output(builtin, tiny_qwen, tmp_path, monkeypatch, capsys):
    from palette_lens.search.direction import Direction

    use_model(monkeypatch, tiny_qwen)
    Direction(torch.ones(tiny_qwen.d_model), 2, -1, "cyber").save(tmp_path / "dirs")
    (tmp_path / "dirs" / "cyber.safetensors").write_bytes(b"\x00" * 10)
    code, err = run_cli(capsys, "bake", "--target", "cyber", "--direction", tmp_path / "dirs" / "cyber.json",
                        "--out", tmp_path / "out")
    assert_one_line_error(code, err, "is corrupt or incomplete")
    search = tmp_path / "search"
    search.mkdir()
    (search / "search.json").write_text('{"target": "cyber", "candidates": [')
    code, err = run_cli(capsys, "bake", "--target", "cyber", "--from", search, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "search.json is corrupt or incomplete")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- operating-system errors, interruptions
def test_disk_full_is_one_line_and_keeps_the_previous_output(builtin, adapter_folder, tiny_qwen, tmp_path,
                                                            monkeypatch, capsys):
    use_model(monkeypatch, tiny_qwen)
    assert run_cli(capsys, "compose", "--from", adapter_folder, "--out", tmp_path)[0] == 0
    good = (tmp_path / "profile-cyber.json").read_bytes()

    def full(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    code, err = run_cli(capsys, "compose", "--from", adapter_folder, "--out", tmp_path)
    assert_one_line_error(code, err, f"No space left on device ({tmp_path / 'profile-cyber.json'})", expected_code=1)
    assert (tmp_path / "profile-cyber.json").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builtin", "profile-cyber.json"]


def test_output_folder_that_is_a_file(builtin, tmp_path, monkeypatch, capsys):
    use_model(monkeypatch)  # refused before the model is loaded, exit 2, the file as it was
    (tmp_path / "taken").write_text("mine")
    code, err = run_cli(capsys, "run", "--target", "cyber", "--out", tmp_path / "taken")
    assert_one_line_error(code, err, f"--out {tmp_path / 'taken'} is an existing file; give a folder")
    assert (tmp_path / "taken").read_text() == "mine"


def test_interrupt_and_unexpected_errors_are_one_line(builtin, tmp_path, monkeypatch, capsys):
    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("palette_lens.cli.common.load_model_from_args", stop)
    monkeypatch.setattr("palette_lens.cli.search.load_model_from_args", stop)
    code, err = run_cli(capsys, "search", "--target", "cyber", "--out", tmp_path / "out")
    assert code == 130 and err.startswith("palette-lens: interrupted") and len(err.splitlines()) == 1

    def bug(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr("palette_lens.cli.search.load_model_from_args", bug)
    code, err = run_cli(capsys, "search", "--target", "cyber", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "unexpected RuntimeError: something broke (rerun with -v", expected_code=1)
    with pytest.raises(RuntimeError):  # -v shows the traceback
        cli.main(["-v", "search", "--target", "cyber", "--out", str(tmp_path / "out")])
    with pytest.raises(RuntimeError):  # -v also after the command
        cli.main(["search", "--target", "cyber", "--out", str(tmp_path / "out"), "-v"])


def test_real_process_prints_one_line_and_exits_non_zero(builtin, tmp_path):
    env = {**os.environ, "PALETTE_LENS_DATA": str(builtin)}
    proc = subprocess.run([sys.executable, "-m", "palette_lens.cli.app", "run", "--target", "nope", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "palette-lens: error: unknown domain 'nope'; known domains: cyber, violence, harmless"
    ]


# ---------------------------------------------------------------------- validate first (issue 23, item 1)
def _fake_run(folder: Path, *domains: str) -> Path:
    """A run folder whose adapters/ lists ``domains`` (metadata only: enough for the checks before the model)."""
    for d in domains:
        (folder / "adapters" / d).mkdir(parents=True)
        (folder / "adapters" / d / "palette_meta.json").write_text(json.dumps({"domain": d}))
    return folder


BEFORE_THE_MODEL = {
    # case: (argv, the line printed after "palette-lens: error: ")
    "run: a profile of a domain that is not a target": (
        ["run", "--target", "cyber", "--profile", "cyber+violence", "--out", "{tmp}/out"],
        "profile 'cyber+violence' needs violence, which is not a target (targets: cyber); add --target violence"),
    "demo: a profile with an empty domain name": (
        ["demo", "--target", "cyber", "--profile", "cyber++violence", "--out", "{tmp}/out"],
        "profile 'cyber++violence' has an empty domain name; join domains with a single '+', e.g. cyber+hate"),
    "run: --profile cyber++violence": (
        ["run", "--target", "cyber", "--target", "violence", "--profile", "cyber++violence", "--out", "{tmp}/out"],
        "profile 'cyber++violence' has an empty domain name"),
    "evaluate: a profile without an adapter": (
        ["evaluate", "--from", "{run}", "--profile", "nosuch"],
        "profile 'nosuch' needs nosuch, which has no adapter here (adapters: cyber)"),
    "evaluate: --from a missing folder": (["evaluate", "--from", "{tmp}/missing"], "--from {tmp}/missing: no such folder"),
    "compose: --from a missing folder": (["compose", "--from", "{tmp}/missing"], "--from {tmp}/missing: no such folder"),
    "compose: --from a folder without adapters": (["compose", "--from", "{tmp}/empty"], "holds no adapters"),
    "compose: --adapter that is not an adapter": (["compose", "--adapter", "{tmp}/empty"],
                                                 "--adapter {tmp}/empty is not an adapter folder (no palette_meta.json)"),
    "compose: --profile cyber++violence": (["compose", "--from", "{run}", "--profile", "cyber++violence"],
                                          "profile 'cyber++violence' has an empty domain name"),
    "compose: --data without --gate": (["compose", "--from", "{run}", "--data", "{tmp}/mine.jsonl"],
                                      "--data is only used to train the gate; add --gate or leave --data out"),
    "compose: --gate-data without --gate": (["compose", "--from", "{run}", "--gate-data", "{tmp}/mine.jsonl"],
                                           ("--gate-data is only used to train the gate; add --gate or leave "
                                            "--gate-data out")),
    "run: --gate-data a folder": (["run", "--target", "cyber", "--gate-data", "{tmp}/empty", "--out", "{tmp}/out"],
                                  ("--gate-data {tmp}/empty is a folder; --gate-data takes JSONL files, e.g. "
                                   "--gate-data {tmp}/empty/*.jsonl")),
    "evaluate: --gate-data of a domain with no prompts": (
        ["evaluate", "--from", "{run}", "--gate-data", "{tmp}/stray.jsonl", "--out", "{tmp}/out"],
        "{tmp}/stray.jsonl: gate pool domain 'art' has no prompts; known domains: cyber, harmless, violence"),
    "compose: a gate option without --gate": (["compose", "--from", "{run}", "--gate-layer", "1"],
                                             "--gate-layer only applies with --gate; add --gate or leave it out"),
    "leakage: --profile cyber++violence": (["leakage", "--from", "{run}", "--profile", "cyber++violence"],
                                          "has an empty domain name"),
    "run: --data a folder": (["run", "--target", "cyber", "--data", "{tmp}/empty", "--out", "{tmp}/out"],
                             "--data {tmp}/empty is a folder; --data takes JSONL files, e.g. --data {tmp}/empty/*.jsonl"),
    "baseline: --replace-data without --data": (["baseline", "--replace-data", "--out", "{tmp}/out"],
                                               "--replace-data needs --data FILE.jsonl"),
    "run: --replace-data without --data": (["run", "--target", "cyber", "--replace-data", "--out", "{tmp}/out"],
                                          "--replace-data needs --data FILE.jsonl"),
    "bake: --direction a missing file": (["bake", "--target", "cyber", "--direction", "{tmp}/d.json", "--out", "{tmp}/out"],
                                        "--direction {tmp}/d.json: no such file"),
    "bake: --from a missing folder": (["bake", "--target", "cyber", "--from", "{tmp}/missing", "--out", "{tmp}/out"],
                                     "--from {tmp}/missing: no such folder"),
    "search: a target that is not harmful": (["search", "--target", "harmless", "--out", "{tmp}/out"],
                                            "the target must be a harmful domain, not 'harmless'"),
}


@pytest.mark.parametrize("case", list(BEFORE_THE_MODEL))
def test_bad_input_is_reported_before_the_model_loads(builtin, tmp_path, monkeypatch, capsys, case):
    argv, line = BEFORE_THE_MODEL[case]
    use_model(monkeypatch)  # loading the model fails the test
    (tmp_path / "empty").mkdir()
    write_jsonl(tmp_path / "mine.jsonl", records("cyber", 8))
    write_jsonl(tmp_path / "stray.jsonl", records("art", 3))
    run = _fake_run(tmp_path / "run", "cyber")
    names = {"tmp": tmp_path, "run": run}
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, *[a.format(**names) for a in argv])
    assert_one_line_error(code, err, line.format(**names))
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


OUT_IS_A_FILE = {
    "run": ["run", "--target", "cyber"],
    "demo": ["demo", "--target", "cyber"],
    "search": ["search", "--target", "cyber"],
    "bake": ["bake", "--target", "cyber"],
    "baseline": ["baseline"],
    "evaluate": ["evaluate", "--from", "{run}"],
    "compose": ["compose", "--from", "{run}"],
    "leakage": ["leakage", "--from", "{run}"],
}


@pytest.mark.parametrize("command", list(OUT_IS_A_FILE))
def test_an_out_that_is_a_file_is_refused_and_left_as_it_was(builtin, tmp_path, monkeypatch, capsys, command):
    use_model(monkeypatch)
    run = _fake_run(tmp_path / "run", "cyber")
    taken = tmp_path / "taken"
    taken.write_text("mine")
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, *[a.format(run=run) for a in OUT_IS_A_FILE[command]], "--out", taken)
    assert_one_line_error(code, err, f"--out {taken} is an existing file; give a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["run", "demo", "search", "bake", "baseline", "evaluate"])
def test_an_out_folder_that_is_not_a_palette_lens_output_is_refused(builtin, tmp_path, monkeypatch, capsys, command):
    use_model(monkeypatch)
    run = _fake_run(tmp_path / "run", "cyber")
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    before = snapshot(home)
    code, err = run_cli(capsys, *[a.format(run=run) for a in OUT_IS_A_FILE[command]], "--out", home)
    assert_one_line_error(code, err, f"--out {home} is a folder with other files in it, not a palette-lens output")
    assert snapshot(home) == before and sorted(p.name for p in home.iterdir()) == ["thesis.tex"]


def test_an_earlier_output_or_an_empty_folder_is_accepted(builtin, tmp_path, monkeypatch):
    from palette_lens.cli.checks import check_output_folder

    (tmp_path / "empty").mkdir()
    run = _fake_run(tmp_path / "run", "cyber")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "baseline.json").write_text("{}")
    for folder in (tmp_path / "new", tmp_path / "empty", run, tmp_path / "base"):
        assert check_output_folder(folder) == folder


def test_leakage_out_is_a_folder_and_a_file_name_still_works(tmp_path, capsys):
    import argparse as _argparse

    from palette_lens.cli.leakage import output_paths

    run = tmp_path / "run"
    run.mkdir()
    assert output_paths(_argparse.Namespace(out=None), run) == (run / "leakage.md", run / "leakage.json")
    assert output_paths(_argparse.Namespace(out=str(tmp_path / "t")), run) == (tmp_path / "t" / "leakage.md",
                                                                              tmp_path / "t" / "leakage.json")
    assert capsys.readouterr().err == ""
    assert output_paths(_argparse.Namespace(out=str(tmp_path / "x.md")), run) == (tmp_path / "x.md", tmp_path / "x.json")
    assert "deprecated" in capsys.readouterr().err


# ---------------------------------------------------------------------- never destroy (issue 23, item 2)
def test_atomic_folder_never_replaces_a_file(tmp_path):
    from palette_lens.util.atomic import atomic_folder

    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(FileExistsError):
        atomic_folder(path, lambda tmp: (tmp / "x").write_text("new"))
    assert path.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("what", ["a file", "a foreign folder"])
def test_compose_export_onto_something_else_is_refused_and_left_intact(builtin, adapter_folder, tmp_path,
                                                                      monkeypatch, capsys, what):
    use_model(monkeypatch)  # refused before the model loads
    target = tmp_path / "target"
    if what == "a file":
        target.write_text("mine")
        line = f"--export {target} is an existing file; give a new folder (it is left as it was)"
    else:
        target.mkdir()
        (target / "model.bin").write_text("someone else's")
        line = f"--export {target} is a folder that is not a palette-lens export (no palette_profile.json)"
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, "compose", "--from", adapter_folder, "--export", target, "--out", tmp_path / "out")
    assert_one_line_error(code, err, line)
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden .target.xxxx.old left


def test_compose_export_replaces_an_earlier_export_as_a_whole(builtin, adapter_folder, tiny_qwen, tmp_path,
                                                              monkeypatch, capsys):
    use_model(monkeypatch, tiny_qwen)
    export = tmp_path / "merged"
    assert run_cli(capsys, "compose", "--from", adapter_folder, "--export", export, "--out", tmp_path / "o")[0] == 0
    (export / "stale.txt").write_text("from the earlier export")
    assert run_cli(capsys, "compose", "--from", adapter_folder, "--export", export, "--out", tmp_path / "o")[0] == 0
    assert (export / "palette_profile.json").is_file() and not (export / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_compose_profile_json_onto_a_folder_is_refused(builtin, tmp_path, monkeypatch, capsys):
    use_model(monkeypatch)
    run = _fake_run(tmp_path / "run", "cyber")
    (tmp_path / "out" / "profile-cyber.json").mkdir(parents=True)
    code, err = run_cli(capsys, "compose", "--from", run, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "profile-cyber.json would be written as a file, but a folder is there")
