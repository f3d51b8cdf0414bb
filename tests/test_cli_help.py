"""The command line as a person meets it: --help of every command, --version, -v anywhere, readable usage
errors, one vocabulary with the old spellings as deprecated aliases, and ``--config FILE.toml``.

None of these loads a model; building the parser imports no torch."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from palette_lens.cli import app as cli
from palette_lens.cli.app import COMMANDS, HelpFormatter, build_parser


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("palette-lens: error: ") and "--help" in lines[1], err
    return lines[0]


# ---------------------------------------------------------------------- --help
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_has_help_and_shows_its_default(command, capsys):
    parser = subparsers()[command]
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0
    page = capsys.readouterr().out
    assert "(default: )" not in page and "default: None" not in page
    formatter = HelpFormatter(prog="x")
    for action in parser._actions:
        if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue  # hidden deprecated aliases
        name = "/".join(action.option_strings)
        assert action.help and action.help.strip(), f"{command} {name} has no help text"
        if action.nargs == 0:
            continue  # a flag: off unless given
        shown = formatter._get_help_string(action) % {"default": action.default, "prog": "x"}
        assert "default" in shown or "(required)" in shown, f"{command} {name}: no default shown in {shown!r}"
        assert "(default: )" not in shown


def test_top_level_help_is_for_users_and_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    page = capsys.readouterr().out
    assert "palette-lens demo --quick" in page and "authorize" in page
    for name in COMMANDS:
        assert name in page
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("palette-lens ")


def test_building_the_parser_imports_no_torch():
    code = ("import sys; from palette_lens.cli.app import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_hardcoded_defaults_agree_with_the_library():
    from palette_lens.bake.config import BakeConfig
    from palette_lens.cli import bake, leakage, run
    from palette_lens.data.attacks import ATTACK_KINDS, MIXED_ORDERS
    from palette_lens.pipeline.config import DEFAULT_TARGETS

    d = BakeConfig()
    assert bake.DEFAULTS == {"steps": d.steps, "rank": d.rank, "alpha": d.alpha}
    assert tuple(leakage.ATTACK_KINDS) == tuple(ATTACK_KINDS) and tuple(leakage.MIXED_ORDERS) == tuple(MIXED_ORDERS)
    assert run.DEFAULT_TARGETS == DEFAULT_TARGETS
    assert all(hasattr(d, field) for field, _ in bake.RESEARCH_FLAGS.values())


# ---------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("argv, line", [
    (["baseline", "--limit", "many"], "palette-lens: error: argument --limit: expected a whole number, not 'many'"),
    (["baseline", "--seed", "x"], "palette-lens: error: argument --seed: expected a whole number, not 'x'"),
    (["leakage", "--from", ".", "--gate-threshold", "high"],
     "palette-lens: error: argument --gate-threshold: expected a number, not 'high'"),
    ([], "palette-lens: error: choose a command: demo, run, baseline, search, bake, compose, evaluate, leakage"),
    (["nosuch"], "palette-lens: error: argument COMMAND: invalid choice: 'nosuch'"),
    (["run"], "palette-lens: error: the following arguments are required: --target"),
    (["bake", "--target", "cyber", "--alpha", "16"],
     "palette-lens: error: --alpha is no longer an option of this command: the LoRA alpha is now --lora-alpha"),
])
def test_usage_errors_are_one_line_plus_the_help_line(capsys, argv, line):
    first = usage_error(capsys, *argv)
    assert first.startswith(line), first
    assert "positive_int" not in first and "invalid int" not in first and "invalid float" not in first


def test_verbose_is_accepted_before_and_after_the_command():
    for argv in (["-v", "baseline"], ["baseline", "-v"], ["baseline", "--verbose"]):
        assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["baseline"]).verbose is False


# ---------------------------------------------------------------------- one vocabulary
def test_the_same_thing_has_the_same_name_in_every_command():
    parsers = subparsers()
    options = {name: {o for a in p._actions if a.help is not argparse.SUPPRESS for o in a.option_strings}
               for name, p in parsers.items()}
    for name in ("compose", "evaluate", "leakage", "bake"):
        assert "--from" in options[name], name
    for name in ("run", "demo", "evaluate", "baseline", "leakage"):
        assert "--limit" in options[name], name
    for name in ("run", "demo", "evaluate", "compose", "leakage", "utility"):
        assert "--compose-weight" in options[name], name
    gate = {"--gate-layer", "--gate-threshold", "--gate-probe", "--gate-kinds", "--gate-authorized-variants",
            "--gate-segment-veto", "--config"}
    for name in ("run", "demo", "evaluate", "compose", "leakage"):  # every command that evaluates a profile
        assert gate <= options[name], name
    for name in COMMANDS:
        assert "--out" in options[name] and "-v" in options[name], name
        for old in ("--weight", "--eval-limit", "--from-search", "--alpha" if name == "bake" else "--none"):
            assert old not in options[name], (name, old)
    assert "--lora-alpha" in options["bake"] and "--alpha" in options["search"]
    outs = {name: next(a for a in p._actions if "--out" in a.option_strings).metavar for name, p in parsers.items()}
    assert set(outs.values()) == {"DIR"}  # leakage --out is a folder too


@pytest.mark.parametrize("argv, dest, value, new", [
    (["compose", "--weight", "0.5"], "compose_weight", 0.5, "--compose-weight"),
    (["run", "--target", "cyber", "--eval-limit", "3"], "limit", 3, "--limit"),
    (["demo", "--eval-limit", "3"], "limit", 3, "--limit"),
    (["bake", "--target", "cyber", "--from-search", "runs/s"], "source", "runs/s", "--from"),
    (["bake", "--target", "cyber", "--scale", "3"], "bake_scale", 3.0, "[bake] scale = ... in --config FILE.toml"),
    (["bake", "--target", "cyber", "--mix", "1,1,1,1"], "bake_mix", (1.0, 1.0, 1.0, 1.0), "[bake] mix"),
    (["bake", "--target", "cyber", "--loss", "rel_mse"], "bake_loss", "rel_mse", "[bake] loss"),
])
def test_old_spellings_still_work_with_a_one_line_warning(capsys, argv, dest, value, new):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"palette-lens: warning: {argv[-2]} is deprecated; use {new}")


def test_deprecated_bake_flags_and_config_reach_the_bake_settings(tmp_path, capsys):
    from palette_lens.cli.bake import bake_settings

    config = tmp_path / "bake.toml"
    config.write_text("[bake]\nscale = 3\nmix = [1, 1, 1, 0.5]\nloss = 'rel_mse'\nsteps = 50\n")
    args = build_parser().parse_args(["bake", "--target", "cyber", "--config", str(config), "--steps", "7",
                                      "--lora-alpha", "8", "--input-shift", "0.25"])
    assert bake_settings(args) == {"scale": 3.0, "mix": (1.0, 1.0, 1.0, 0.5), "loss": "rel_mse", "steps": 7,
                                   "alpha": 8.0, "input_shift": 0.25}  # flags win over the file


def test_config_reaches_the_pipeline_settings_echoed_in_details_json(tmp_path):
    from palette_lens.cli.run import pipeline_config

    config = tmp_path / "c.toml"
    config.write_text("[bake]\nmargin_retry = 0.0\n\n[gate]\nthreshold = 0.4\nlayer = 2\n")
    args = build_parser().parse_args(["run", "--target", "cyber", "--config", str(config), "--gate-layer", "1",
                                      "--limit", "5"])
    cfg = pipeline_config(args, ["cyber"])
    assert cfg.bake == {"margin_retry": 0.0} and cfg.gate == {"threshold": 0.4, "layer": 1} and cfg.eval_limit == 5
    assert cfg.to_dict()["bake"] == {"margin_retry": 0.0}  # details.json's "config" is cfg.to_dict()


# ---------------------------------------------------------------------- --config FILE.toml
@pytest.mark.parametrize("text, match", [
    ("[bake]\nstpes = 3\n", "unknown key 'stpes' in [bake] (did you mean 'steps'?)"),
    ("[bake]\nsteps = 'ten'\n", "[bake] steps must be an integer, not 'ten'"),
    ("[bake]\nloss = 'l1'\n", "[bake] loss must be one of 'cosine', 'rel_mse', not 'l1'"),
    ("[bake]\nmix = [1, 1]\n", "[bake] mix must be a list of 4 numbers"),
    ("[bake]\nscale = true\n", "[bake] scale must be a number, not True"),
    ("[search]\nalpha = 1\n", "unknown table [search]; this command reads [bake]"),
    ("bake = 3\n", "bake must be a table"),
    ("[bake\n", "is not valid TOML"),
])
def test_bad_config_files_are_one_line_errors_naming_the_key(tmp_path, capsys, monkeypatch, text, match):
    from palette_lens.cli import bake

    monkeypatch.setattr(bake, "load_model_from_args", lambda args: pytest.fail("model loaded for a bad --config"))
    path = tmp_path / "c.toml"
    path.write_text(text)
    code = cli.main(["bake", "--target", "cyber", "--config", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [err.strip()] and err.startswith("palette-lens: error: --config "), err
    assert match in err, err
    assert not (tmp_path / "out").exists()


def test_gate_config_is_checked_by_the_gate(tmp_path, capsys, monkeypatch):
    from palette_lens.cli import compose

    monkeypatch.setattr(compose, "load_model_from_args", lambda args: pytest.fail("model loaded for a bad --config"))
    run = tmp_path / "run"
    (run / "adapters" / "cyber").mkdir(parents=True)
    (run / "adapters" / "cyber" / "palette_meta.json").write_text('{"domain": "cyber"}')
    path = tmp_path / "g.toml"
    path.write_text("[gate]\nthreshold = 1.5\n")
    code = cli.main(["compose", "--from", str(run), "--config", str(path), "--gate"])
    assert code == 2
    assert "[gate]: gate threshold" in capsys.readouterr().err
    code = cli.main(["compose", "--from", str(run), "--config", str(tmp_path / "none.toml"), "--gate"])
    assert code == 2 and "none.toml: no such file" in capsys.readouterr().err
