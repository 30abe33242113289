"""A process that has already imported torch and MLflow, and forks each leg of a check or a bisect.

A leg is a fresh run of the user's job in a process of its own; started with ``python``, each
spends four of its six or seven seconds importing torch and MLflow before its first step.
This zygote pays that once: it imports them, runs nothing, and for each leg forks a child that
becomes the job, as ``python [-P] -m MODULE`` or ``python SCRIPT`` would start it (``sys.argv``,
``sys.path``, ``__main__``, the folder, the environment, its own stderr file), and ends as
Python ends (non-daemon threads joined, ``atexit`` run).

Why a fork is as fresh as a new process for what a run records and computes:
- the zygote runs no torch op and starts no Python thread (forking after either would copy a
  thread pool's locks or a half-done state); it imports only what every job imports anyway. The
  native threads libraries start as they load (one by torch, jemalloc's by a library MLflow loads)
  are not in the child; those libraries set themselves up again after a fork, as they do in the
  writers' zygote (``mlrepro.store.zygote``), and a leg with ``threads=2`` runs OpenMP as usual;
- every generator is seeded by ``start_run`` in the child, after the fork;
- CUDA is never initialised here, so each child starts its own;
- ``PYTHONHASHSEED`` is fixed when an interpreter starts: a leg is served only where it
  asks for the zygote's own, and only where its environment differs from the zygote's in
  the variables mlrepro sets for a leg; any other leg starts as a new process.

Protocol: one JSON object a line on stdin (``argv`` after ``python``, ``cwd``, ``env``, ``stderr``),
one JSON line back on stdout with the leg's exit code. The zygote ends when stdin closes.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# Variables a leg may set that nothing reads before a job's own code runs. PYTHONPATH is not one:
# it decides which mlrepro (and which of the job's modules) the zygote itself imported.
LEG_VARIABLES = frozenset({"MLFLOW_TRACKING_URI", "MLREPRO_SPOOL_DIR", "MLREPRO_ORDERS"})


def servable(argv: Sequence[str], env: Mapping[str, str], zygote_env: Mapping[str, str]) -> bool:
    """Whether a leg ``argv`` (with ``python`` first) in ``env`` can be forked from a zygote started in
    ``zygote_env``: the same interpreter, a module or a script, and no other difference that an
    interpreter or torch reads as it starts."""
    if len(argv) < 2 or argv[0] != sys.executable or _entry(argv[1:]) is None:
        return False
    keys = (set(env) | set(zygote_env)) - LEG_VARIABLES
    return all(env.get(key) == zygote_env.get(key) for key in keys)


def _entry(words: Sequence[str]) -> tuple[bool, list[str]] | None:
    """Interpreter words a leg may start with, after ``python``: ``[-P] -m MODULE ...`` or ``[-P] SCRIPT
    ...``. Whether ``-P`` (keep the starting folder off ``sys.path``) is given, and the rest; None for
    any other option, which only a process of its own starts as asked."""
    safe_path = bool(words) and words[0] == "-P"
    rest = list(words[1:] if safe_path else words)
    if not rest or (rest[0] == "-m" and len(rest) < 2) or (rest[0].startswith("-") and rest[0] != "-m"):
        return None
    return safe_path, rest


class LegZygote:
    """The check's or bisect's handle on its zygote: started at once, so that it imports while the
    caller gets ready, and asked for one leg at a time."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mlrepro.training.leg_zygote"], env=self.env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def run(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], stderr: Path) -> int | None:
        """Fork the leg and wait for it: its exit code, or None where the zygote is gone (start it as
        a process of its own then)."""
        request = {"argv": list(argv[1:]), "cwd": str(cwd), "env": dict(env), "stderr": str(stderr)}
        stdin, stdout = self._process.stdin, self._process.stdout
        if stdin is None or stdout is None:
            return None
        try:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            answer = stdout.readline()
        except (BrokenPipeError, OSError):
            return None
        try:
            return int(json.loads(answer)["exit_code"])
        except (ValueError, KeyError, TypeError):
            return None

    def close(self) -> None:
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _become_the_job(request: dict[str, Any]) -> int:
    """In the forked child: the job, started as ``python ARGV`` would start it; its exit code."""
    # What a job's process imports anyway, already here; runpy and the rest only in the child.
    import atexit
    import runpy
    import threading
    import traceback

    safe_path, argv = _entry(request["argv"]) or (False, request["argv"])  # servable() said it is one
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(stderr, 2)
    # As the interpreter builds sys.path: the script's folder (or the current one for -m) first, or
    # neither under -P; the rest (PYTHONPATH, the installation) is the zygote's, which the same
    # environment built. (sys.flags.safe_path stays the zygote's: only a relaunch under torchrun reads
    # it, and a leg trains in one process.)
    if safe_path:
        del sys.path[0]
    else:
        sys.path[0] = os.getcwd() if argv[0] == "-m" else str(Path(argv[0]).resolve().parent)
    sys.orig_argv = [sys.executable, *request["argv"]]
    code: int = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as done:
        code = _exit_code(done.code)
    except BaseException:  # a job's uncaught error: printed as Python would, exit 1
        traceback.print_exc()
        code = 1
    # As Python ends: wait for non-daemon threads, then the exit handlers.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def _serve(requests: IO[str], answers: IO[str]) -> None:
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _become_the_job(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"exit_code": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


# What a job opened through mlrepro imports on its way to its first step (torchvision: a vision job);
# IPython is what MLflow's start_run imports to ask whether it runs in a Databricks notebook.
_IMPORTED_AHEAD = ("torch", "torchvision", "mlflow", "mlflow.tracking", "mlflow.store.db.utils",
                   "mlflow.store.tracking.sqlalchemy_store", "IPython", "mlrepro.training.tracking")

if __name__ == "__main__":
    for name in _IMPORTED_AHEAD:
        try:
            importlib.import_module(name)
        except ImportError:  # not installed here (IPython): the leg imports what it needs itself
            pass
    _serve(sys.stdin, sys.stdout)
