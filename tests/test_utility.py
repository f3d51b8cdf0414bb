"""The utility benchmark (HumanEval pass@1): the sandbox, code extraction, results, the report section and the
``palette-lens utility`` command's checks; one integration test runs the command on the default model."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from palette_lens.cli import app as cli
from palette_lens.evaluate.humaneval import (
    HUMAN_EVAL_SIZE,
    Problem,
    build_program,
    chat_prompt,
    check_solution,
    check_solutions,
    extract_code,
    load_problems,
)
from palette_lens.evaluate.utility import UtilityConfig, UtilityResult, utility_table
from palette_lens.util.sandbox import ExecutionResult, SandboxLimits, run_sandboxed


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return load_problems()


# ---------------------------------------------------------------------- problems
def test_problems_come_in_task_id_order(problems):
    assert len(problems) == HUMAN_EVAL_SIZE == 164
    assert [p.task_id for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert problems[-1].task_id == "HumanEval/163"
    assert [p.task_id for p in load_problems(limit=12)] == [p.task_id for p in problems[:12]]


@pytest.mark.parametrize("limit", [0, 165, -3])
def test_a_limit_outside_the_problems_is_refused(limit):
    from palette_lens.errors import PaletteError

    with pytest.raises(PaletteError, match="between 1 and 164"):
        load_problems(limit)


def test_the_chat_prompt_holds_the_signature(problems):
    text = chat_prompt(problems[0])
    assert text.startswith("Complete the following Python function.")
    assert "```python\n" + problems[0].prompt in text and text.endswith("```")


# ---------------------------------------------------------------------- the sandbox
@pytest.mark.parametrize("index", [0, 10, 38])  # 10 and 38 use a helper defined in the prompt
def test_canonical_solutions_pass(problems, index):
    p = problems[index]
    result = check_solution(p, p.prompt + p.canonical_solution)
    assert result.passed and result.status == "passed", result


def test_a_wrong_solution_fails(problems):
    p = problems[0]
    result = check_solution(p, p.prompt + "    return False\n")
    assert not result.passed and result.status == "failed"
    assert "AssertionError" in result.detail


def test_a_syntax_error_fails(problems):
    result = check_solution(problems[0], "def has_close_elements(:\n")
    assert result.status == "failed" and "SyntaxError" in result.detail


def test_an_infinite_loop_is_killed_within_the_timeout(problems):
    p = problems[0]
    t0 = time.perf_counter()
    result = check_solution(p, p.prompt + "    while True:\n        pass\n", timeout_s=1.5)
    assert result.status == "timeout" and not result.passed
    assert time.perf_counter() - t0 < 30  # killed: the loop never ends by itself (the bound only allows a busy machine)


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit():
    t0 = time.perf_counter()
    result = run_sandboxed("import time\ntime.sleep(60)", SandboxLimits(timeout_s=1.0))
    assert result.status == "timeout" and time.perf_counter() - t0 < 30  # killed long before the 60 s sleep ends


@pytest.mark.parametrize("code", [
    "import socket\nsocket.socket()",
    "import socket\nsocket.create_connection(('127.0.0.1', 9))",
    "import _socket\n_socket.socket()",
])
def test_no_sockets(code):
    result = run_sandboxed(code)
    assert result.status == "failed" and "PermissionError" in result.detail and "network" in result.detail


@pytest.mark.parametrize("how", [
    "open({path!r}, 'w').write('x')",
    "open({path!r}, 'a').write('x')",
    "import pathlib\npathlib.Path({path!r}).write_text('x')",
    "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
    "import io\nio.FileIO({path!r}, 'w').close()",
])
def test_no_writes_outside_the_working_folder(tmp_path, how):
    target = tmp_path / "escaped.txt"
    result = run_sandboxed(how.format(path=str(target)))
    assert result.status == "failed" and "PermissionError" in result.detail, result
    assert not target.exists()


@pytest.mark.parametrize("how", [
    "import os\nos.remove({path!r})",
    "import os\nos.rename({path!r}, 'moved.txt')",
    "import shutil\nshutil.rmtree({folder!r})",
    "import os\nos.mkdir({folder!r} + '/new')",
])
def test_no_changes_to_files_outside(tmp_path, how):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    result = run_sandboxed(how.format(path=str(keep), folder=str(tmp_path)))
    assert result.status == "failed" and "PermissionError" in result.detail, result
    assert keep.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_writing_inside_the_working_folder_is_allowed():
    code = ("import os, pathlib, tempfile\n"
            "open('a.txt', 'w').write('x')\n"
            "pathlib.Path('sub').mkdir()\n"
            "pathlib.Path('sub/b.txt').write_text('y')\n"
            "os.rename('a.txt', 'sub/c.txt')\n"
            "os.remove('sub/c.txt')\n"
            "with tempfile.NamedTemporaryFile() as f:\n"
            "    f.write(b'z')\n"
            "assert sorted(os.listdir('sub')) == ['b.txt']\n")
    result = run_sandboxed(code)
    assert result.passed, result


@pytest.mark.parametrize("code", [
    "import subprocess\nsubprocess.run(['true'])",
    "import os\nos.system('true')",
    "import os\nos.fork()",
    "import os\nos.execv('/bin/true', ['true'])",
])
def test_no_new_processes(code):
    result = run_sandboxed(code)
    assert result.status == "failed" and "PermissionError" in result.detail, result


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)", "exit()", "import os\nos._exit(0)"])
def test_exiting_before_the_tests_finish_is_a_failure(code):
    assert run_sandboxed(code).status == "failed"


def test_a_memory_hog_fails():
    result = run_sandboxed("x = bytearray(4 * 2**30)")
    assert result.status == "failed" and "MemoryError" in result.detail


def test_programs_run_in_parallel_in_order(problems):
    ps = problems[:4]
    codes = [p.prompt + p.canonical_solution for p in ps]
    codes[2] = ps[2].prompt + "    return None\n"
    assert [r.passed for r in check_solutions(ps, codes, workers=2)] == [True, True, False, True]


def test_the_program_calls_check_on_the_entry_point(problems):
    program = build_program(problems[0], "CODE")
    assert program.startswith("CODE\n") and program.rstrip().endswith("check(has_close_elements)")


# ---------------------------------------------------------------------- code extraction
PROBLEM = Problem("t/0", "import math\nfrom typing import List\n\n\ndef area(r: float) -> float:\n"
                         '    """Area of a circle."""\n', "area", "def check(c):\n    assert c(1) == math.pi\n")


def test_the_first_python_block_is_taken():
    reply = ("Sure:\n```python\ndef area(r):\n    return math.pi * r * r\n```\nUsage:\n```python\nprint(area(2))\n```")
    code = extract_code(reply, PROBLEM)
    assert "print(area(2))" not in code and "return math.pi * r * r" in code
    assert code.startswith("import math\n\nfrom typing import List")  # the prompt's imports come first
    assert check_solution(PROBLEM, code).passed


def test_a_python_block_is_preferred_to_another_fence():
    reply = "```text\nnot code\n```\n```py\ndef area(r):\n    return math.pi * r ** 2\n```"
    assert check_solution(PROBLEM, extract_code(reply, PROBLEM)).passed


def test_a_body_without_the_def_is_appended_to_the_prompt():
    code = extract_code("```python\n    return math.pi * r * r\n```", PROBLEM)
    assert code.startswith(PROBLEM.prompt) and check_solution(PROBLEM, code).passed


def test_a_reply_without_a_fence_is_code():
    code = extract_code("def area(r):\n    return math.pi * r * r\n", PROBLEM)
    assert check_solution(PROBLEM, code).passed


def test_an_unterminated_block_counts_to_the_end():
    code = extract_code("```python\ndef area(r):\n    return math.pi * r * r\n", PROBLEM)
    assert code.rstrip().endswith("return math.pi * r * r") and "```" not in code


@pytest.mark.parametrize("reply", [
    "Sure:\n```python\ndef area(r):\n    return math.pi * r * r\n```\nUsage:\n```python\nprint(area(2))\n```",
    "```text\nnot code\n```\n```py\ndef area(r):\n    return math.pi * r ** 2\n```\nThat is all.",
    "Here it is:\n```python3\n    return math.pi * r * r\n``` and more text",
    "def area(r):\n    return math.pi * r * r\n",
])
def test_a_reply_stopped_once_its_python_block_closed_gives_the_same_program(reply):
    """Every prefix at which python_block_closed holds already yields the whole reply's program."""
    from palette_lens.evaluate.humaneval import python_block_closed

    closed = [k for k in range(len(reply) + 1) if python_block_closed(reply[:k])]
    assert closed == list(range(closed[0], len(reply) + 1)) if closed else "```" not in reply
    for k in closed:
        assert extract_code(reply[:k], PROBLEM) == extract_code(reply, PROBLEM)


def test_helpers_of_the_prompt_are_kept_unless_redefined(problems):
    p = problems[10]  # make_palindrome calls is_palindrome, defined in the prompt
    body = p.canonical_solution
    reply = f"```python\ndef make_palindrome(string: str) -> str:\n{body}```"
    code = extract_code(reply, p)
    assert "def is_palindrome" in code and check_solution(p, code).passed
    own = "def is_palindrome(s):\n    return s == s[::-1]\n\n"
    code = extract_code(f"```python\n{own}def make_palindrome(string: str) -> str:\n{body}```", p)
    assert code.count("def is_palindrome") == 1 and check_solution(p, code).passed


# ---------------------------------------------------------------------- results
def test_results_and_their_json():
    outcomes = [ExecutionResult(True, "passed")] * 3 + [ExecutionResult(False, "failed")]
    r = UtilityResult("cyber gated", [f"t/{i}" for i in range(4)], outcomes, [""] * 4, opened=1)
    d = utility_table({"cyber gated": r})["cyber gated"]
    assert d["n"] == 4 and d["passed"] == 3 and d["pass_at_1"] == 0.75 and d["opened"] == 1
    assert d["failed"] == ["t/3"] and d["ci"][0] < 0.75 < d["ci"][1]
    assert "opened" not in UtilityResult("vanilla", ["t/0"], outcomes[:1], [""]).to_dict()
    json.dumps(d)


def test_report_section_lists_the_variants():
    from palette_lens.report.html import utility_section

    page = utility_section({"vanilla": {"pass_at_1": 0.5, "n": 164, "ci": [0.42, 0.58]},
                            "cyber gated": {"pass_at_1": 0.49, "n": 164, "ci": [0.41, 0.57], "opened": 2}})
    assert "Utility (HumanEval pass@1)" in page and "95% Wilson CI" in page
    assert "<td class=\"l\">cyber gated</td><td>49.0%</td><td>41.0%–57.0%</td><td>164</td><td>2</td>" in page


def test_cli_defaults_agree_with_the_library():
    from palette_lens.cli import utility

    c = UtilityConfig()
    assert utility.HUMAN_EVAL_SIZE == HUMAN_EVAL_SIZE
    assert (utility.DEFAULT_TIMEOUT_S, utility.DEFAULT_MAX_NEW_TOKENS, utility.DEFAULT_BATCH_SIZE) == (
        c.timeout_s, c.max_new_tokens, c.batch_size)


def test_merge_keeps_earlier_variants_on_as_many_problems(tmp_path):
    from palette_lens.cli.utility import merge_with_earlier

    path = tmp_path / "utility.json"
    old = {"vanilla": {"pass_at_1": 0.5, "n": 10}, "hate": {"pass_at_1": 0.4, "n": 10}}
    path.write_text(json.dumps(old))
    new = {"vanilla": {"pass_at_1": 0.6, "n": 10}, "cyber": {"pass_at_1": 0.6, "n": 10}}
    assert merge_with_earlier(path, new) == {"vanilla": new["vanilla"], "hate": old["hate"], "cyber": new["cyber"]}
    assert list(merge_with_earlier(path, new)) == ["vanilla", "hate", "cyber"]
    other = {"vanilla": {"pass_at_1": 0.6, "n": 20}}
    assert merge_with_earlier(path, other) == other


def test_vanillas_replies_are_cached_for_the_next_run(tiny_qwen, tmp_path, monkeypatch):
    """A second run on the same model and settings reads vanilla's replies instead of generating them; another
    generation setting (or model) does not."""
    from palette_lens.evaluate import utility
    from palette_lens.evaluate.utility import measure_utility

    monkeypatch.setenv("PALETTE_LENS_CACHE", str(tmp_path))
    config = UtilityConfig(max_new_tokens=6, first_phase=3, batch_size=2, timeout_s=5)
    first = measure_utility(tiny_qwen, {}, limit=2, config=config)["vanilla"]
    assert len(list((tmp_path / "generations").glob("humaneval-*.safetensors"))) == 1

    def no_generation(self, lm, desc):
        raise AssertionError("vanilla's replies were generated again")

    with monkeypatch.context() as m:
        m.setattr(utility._Runner, "generate", no_generation)
        again = measure_utility(tiny_qwen, {}, limit=2, config=config)["vanilla"]
    assert again.completions == first.completions and again.passed == first.passed
    calls = []
    original = utility._Runner.generate
    monkeypatch.setattr(utility._Runner, "generate", lambda self, lm, desc: calls.append(desc) or original(self, lm, desc))
    measure_utility(tiny_qwen, {}, limit=2, config=replace(config, max_new_tokens=5))
    measure_utility(tiny_qwen, {}, limit=2, config=replace(config, cache=False))
    assert calls == ["vanilla", "vanilla"]


def test_a_gated_variant_is_the_gated_model_open_or_shut(tiny_qwen, tmp_path, monkeypatch):
    """An open gate answers every problem as the merged profile does, a shut one as vanilla."""
    from helpers import TOPICS, random_adapter, toy_prompts

    from palette_lens.evaluate.utility import measure_utility
    from palette_lens.gate.config import GateConfig
    from palette_lens.gate.training import fit_gate

    monkeypatch.setenv("PALETTE_LENS_CACHE", str(tmp_path))
    cyber = random_adapter(tiny_qwen, layer_index=2, seed=1, domain="cyber", scale=0.6)
    gate = fit_gate(tiny_qwen, toy_prompts(TOPICS, 16), ["cyber"], GateConfig(layer=1, segment_veto=None))
    config = UtilityConfig(max_new_tokens=6, first_phase=3, batch_size=2, timeout_s=5, use_drafts=False)
    opened = measure_utility(tiny_qwen, {"cyber": cyber}, ["cyber"], {"cyber": replace(gate, threshold=-1.0)},
                             limit=3, config=config)
    assert opened["cyber gated"].opened == 3 and opened["cyber gated"].completions == opened["cyber"].completions
    assert opened["cyber"].completions != opened["vanilla"].completions  # the adapter changes the replies
    shut = measure_utility(tiny_qwen, {"cyber": cyber}, ["cyber"], {"cyber": replace(gate, threshold=1.0)},
                           limit=3, config=config)
    assert shut["cyber gated"].opened == 0 and shut["cyber gated"].completions == shut["vanilla"].completions


# ---------------------------------------------------------------------- the command's checks, before any model
def no_model(monkeypatch) -> None:
    from palette_lens.cli import utility

    def load(args):
        pytest.fail("the model was loaded although the input was already known to be bad")

    monkeypatch.setattr(utility, "load_model_from_args", load)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, match: str) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("palette-lens: error: ") and "Traceback" not in err, err
    assert match in lines[0], err


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder with the shipped run's adapters and gates (only the folder layout is read here)."""
    from palette_lens.pipeline.builtin import builtin_run_dir

    folder = tmp_path / "run"
    shutil.copytree(builtin_run_dir(), folder)
    return folder


@pytest.mark.parametrize("extra, match", [
    (["--limit", "0"], "--limit must be between 1 and 164 (HumanEval's problems), not 0"),
    (["--limit", "165"], "--limit must be between 1 and 164 (HumanEval's problems), not 165"),
    (["--timeout", "0"], "--timeout must be a number of seconds above 0, not 0"),
    (["--timeout", "-2"], "--timeout must be a number of seconds above 0, not -2"),
    (["--timeout", "nan"], "--timeout must be a number of seconds above 0, not nan"),
    (["--profile", "cyber+nope"], "profile 'cyber+nope' needs nope, which has no adapter in"),
    (["--profile", "violence"], "profile 'violence' needs violence, which has no adapter in"),
    (["--profile", "cyber++hate"], "has an empty domain name"),
    (["--profile", "cyber", "--profile", "cyber"], "profile 'cyber' is given twice"),
])
def test_bad_input_is_one_line_before_the_model(run_dir, monkeypatch, capsys, extra, match):
    no_model(monkeypatch)
    code, err = run_cli(capsys, "utility", "--from", run_dir, *extra)
    assert_one_line_error(code, err, match)
    assert not (run_dir / "utility.json").exists()


def test_run_folder_problems(tmp_path, monkeypatch, capsys):
    no_model(monkeypatch)
    code, err = run_cli(capsys, "utility", "--from", tmp_path / "missing")
    assert_one_line_error(code, err, "--from " + str(tmp_path / "missing") + ": no such folder")
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "utility", "--from", tmp_path / "empty")
    assert_one_line_error(code, err, "is not a run folder: it holds no adapters")
    (tmp_path / "notes.txt").write_text("mine")
    code, err = run_cli(capsys, "utility", "--from", tmp_path / "notes.txt")
    assert_one_line_error(code, err, "is a file; it takes a folder")


def test_the_shipped_run_is_read_only(tmp_path, monkeypatch, capsys):
    from palette_lens.pipeline.builtin import builtin_run_dir

    no_model(monkeypatch)
    before = sorted(p.name for p in builtin_run_dir().iterdir())
    for source in ("builtin", str(builtin_run_dir())):
        code, err = run_cli(capsys, "utility", "--from", source)
        assert_one_line_error(code, err, "--from builtin is the run shipped inside the package, which is read-only; "
                                         "give --out DIR")
    code, err = run_cli(capsys, "utility", "--from", "builtin", "--out", builtin_run_dir(), "--limit", "500")
    assert_one_line_error(code, err, "--limit must be between 1 and 164")
    assert sorted(p.name for p in builtin_run_dir().iterdir()) == before


def test_outputs_that_are_not_ours_are_refused_and_left_alone(run_dir, tmp_path, monkeypatch, capsys):
    no_model(monkeypatch)
    (tmp_path / "notes.txt").write_text("mine")
    code, err = run_cli(capsys, "utility", "--from", run_dir, "--out", tmp_path / "notes.txt")
    assert_one_line_error(code, err, "is an existing file; give a folder")
    (run_dir / "utility.json").write_text('{"my": "notes"}')
    code, err = run_cli(capsys, "utility", "--from", run_dir)
    assert_one_line_error(code, err, "exists and is not a utility.json written by palette-lens utility")
    assert (run_dir / "utility.json").read_text() == '{"my": "notes"}'
    (tmp_path / "out" / "utility.json").mkdir(parents=True)
    code, err = run_cli(capsys, "utility", "--from", run_dir, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "would be written as a file, but a folder is there")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------- on the default model
@pytest.mark.integration
def test_utility_command_on_the_default_model(default_model, run_dir, monkeypatch, capsys):
    """``utility --limit 4 --profile cyber`` on the shipped run: vanilla, cyber and cyber gated."""
    from palette_lens.cli import utility

    monkeypatch.setattr(utility, "load_model_from_args", lambda args: default_model)
    (run_dir / "utility.json").write_text(json.dumps({"hate": {"pass_at_1": 0.25, "n": 4, "ci": [0.0, 1.0]}}))
    code = cli.main(["utility", "--from", str(run_dir), "--limit", "4", "--profile", "cyber"])
    out = capsys.readouterr().out
    assert code == 0, out
    table = json.loads((run_dir / "utility.json").read_text())
    assert set(table) == {"hate", "vanilla", "cyber", "cyber gated"}  # the earlier entry on 4 problems is kept
    for name in ("vanilla", "cyber", "cyber gated"):
        entry = table[name]
        assert entry["n"] == 4 and entry["passed"] == round(4 * entry["pass_at_1"])
        assert entry["ci"][0] <= entry["pass_at_1"] <= entry["ci"][1]
    # the default model solves the first HumanEval problems; a broken generation or extraction solves none
    assert table["vanilla"]["passed"] >= 3, table
    assert abs(table["cyber"]["passed"] - table["vanilla"]["passed"]) <= 1
    assert 0 <= table["cyber gated"]["opened"] <= 4
    assert "vanilla" in out and "written:" in out
