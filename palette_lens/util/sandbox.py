"""Run a Python program in a separate, restricted process (the utility benchmark runs generated code with it).

The program runs in a fresh temporary folder with a minimal environment, a wall-clock timeout, CPU, memory,
file-size and process limits (``setrlimit``), after a Python prelude that makes socket creation, process
creation and file-system changes outside that folder raise :class:`PermissionError`. It guards against
accidents of generated code, not against code written to escape it. Standard library only.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
