"""A job started by ``mlrepro check`` or ``mlrepro bisect`` in a fresh process, under orders.

Both need the user's own training loop to run a little differently without editing it:
stop after step k, start from a checkpoint file instead of a run's newest, say how long
its loop took, and (bisect) trace every module's output and gradient. The orders travel
as a JSON file named by ``MLREPRO_ORDERS``; ``start_run`` reads them, so any job that
opens its run with mlrepro obeys. The legs run against a scratch store of their own, and
their stderr is kept for the one line that says why a leg failed.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlrepro.errors import MlreproError, SpecError, one_line
from mlrepro.training.leg_zygote import LEG_VARIABLES, LegZygote, servable

ORDERS_ENV = "MLREPRO_ORDERS"
# A job started with this variable set turns its words into a spec, and exits: 0 if they make one, else
# 2 with its one line. What a check asks before its first leg, in well under a second: torch is not imported.
SPEC_ONLY_ENV = "MLREPRO_SPEC_ONLY"

_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class Orders(BaseModel):
    """What a leg's job is told to do differently."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stop_after: int | None = None  # end the run, FINISHED, once this many steps are logged (counted from 0)
    checkpoint: str | None = None  # a checkpoint file (with its .sha256 beside it) to start from
    trace: str | None = None  # where to write the replay's trace (mlrepro.training.tracing), up to trace_until
    trace_until: int | None = None  # the last step traced; the job stops when the next one starts
    report: str | None = None  # where to write what the leg did: its run, its steps, its loop's time


class StopRequested(BaseException):
    """Raised in the training loop once the orders' last step is done: a BaseException, so that a
    loop's own ``except Exception`` does not swallow it. ``start_run`` ends the run FINISHED."""


class LegReport(BaseModel):
    """What a leg's job says it did."""

    run_id: str
    first_step: int
    steps: int  # steps logged by this run (from first_step)
    loop_seconds: float  # from the first step to the last, the run's opening and closing excluded


def read_orders() -> Orders | None:
    """The orders this process was started with; None for a job started by its user."""
    path = os.environ.get(ORDERS_ENV)
    if not path:
        return None
    try:
        return Orders.model_validate_json(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise MlreproError(f"{ORDERS_ENV}={path}: not orders mlrepro wrote ({type(err).__name__})") from err


def write_report(orders: Orders, report: LegReport) -> None:
    if orders.report:
        Path(orders.report).write_text(report.model_dump_json())


class LegFailed(MlreproError):
    """A leg's job exited with an error; its last line of stderr says why."""


@dataclass(frozen=True)
class JobCommand:
    """How to start a job in a fresh process: its command line before the spec's words, and where."""

    argv: list[str]
    cwd: Path
    pythonpath: list[str]

    def describe(self) -> str:
        return " ".join(self.argv[1:])

    def python_path(self) -> str:
        """PYTHONPATH for the job's process: where its module is found, then the caller's own."""
        return os.pathsep.join(filter(None, [*self.pythonpath, os.environ.get("PYTHONPATH")]))

    def check_words(self, words: list[str], as_given: list[str]) -> None:
        """Refuse words that make no spec of this job, said by the job itself, before any leg starts;
        the message quotes the words ``as_given`` by the user."""
        env = dict(os.environ, **{SPEC_ONLY_ENV: "1"})
        env["PYTHONPATH"] = self.python_path()
        env.pop(ORDERS_ENV, None)
        done = subprocess.run([*self.argv, *words], cwd=self.cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, errors="replace", check=False)
        if done.returncode != 0:
            why = _last_line(done.stderr, done.returncode).removeprefix("mlrepro: error: ")
            raise SpecError(f"{' '.join([self.describe(), *as_given])}: {why}")


def _last_line(stderr: str, exit_code: int) -> str:
    """Why a job's process failed: its last line on stderr, else its exit code."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else f"exit {exit_code}"


@dataclass(frozen=True)
class Leg:
    """One fresh process of a job: the leg's name, the spec's words, its orders."""

    name: str
    words: list[str]
    orders: Orders
    env: dict[str, str] | None = None


class Scratch:
    """A scratch MLflow store and spool in a temporary folder, where a check's or a bisect's legs log
    their runs; removed with the folder. The user's store sees only what is recorded on purpose."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="mlrepro-legs-")
        self.folder = Path(self._folder.name)
        self.uri = f"sqlite:///{self.folder / 'legs.db'}"
        self.spool = self.folder / "spool"
        self.legs_run = 0
        self._zygote: LegZygote | None = None

    def client(self) -> Any:

        # the store (MLflow) only when a check or bisect opens its scratch store
        from mlrepro.store.opening import ready_store

        # MLflow says at INFO that it makes the scratch store's tables: nothing the user needs to read.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        return ready_store(self.uri)

    def run(self, job: JobCommand, leg: Leg) -> LegReport:
        """Start ``leg`` and wait for it; its report, or ``LegFailed`` with the job's own last line."""
        stem = self.folder / leg.name.replace(" ", "-")
        orders = leg.orders.model_copy(update={"report": str(stem.with_suffix(".report.json"))})
        stem.with_suffix(".orders.json").write_text(orders.model_dump_json())
        env = dict(os.environ, MLFLOW_TRACKING_URI=self.uri, MLREPRO_SPOOL_DIR=str(self.spool),
                   **{ORDERS_ENV: str(stem.with_suffix(".orders.json"))}, **(leg.env or {}))
        env["PYTHONPATH"] = job.python_path()
        env.setdefault("PYTHONHASHSEED", "0")
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(name, None)
        started = time.perf_counter()
        self.legs_run += 1
        argv, stderr = [*job.argv, *leg.words], stem.with_suffix(".stderr")
        exit_code = self._forked(argv, job.cwd, env, stderr)
        if exit_code is None:  # a new process: the zygote cannot start this leg as the interpreter would
            with stderr.open("w") as errors:
                exit_code = subprocess.run(argv, cwd=job.cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors,
                                           check=False).returncode
        report = Path(orders.report)  # type: ignore[arg-type]
        if exit_code != 0 or not report.exists():
            why = _last_line(stderr.read_text(errors="replace"), exit_code)
            raise LegFailed(f"{leg.name}: {job.describe()} {' '.join(leg.words)} failed after "
                            f"{time.perf_counter() - started:.1f} s: {why}")
        return LegReport.model_validate_json(report.read_text())

    def _forked(self, argv: list[str], cwd: Path, env: dict[str, str], stderr: Path) -> int | None:
        """The leg forked from the zygote (started by the first leg, in that leg's environment): its exit
        code, or None where the leg needs a process of its own."""
        if not servable(argv, env, env if self._zygote is None else self._zygote.env):
            return None
        if self._zygote is None:
            self._zygote = LegZygote({key: value for key, value in env.items() if key not in LEG_VARIABLES})
        return self._zygote.run(argv, cwd, env, stderr)

    def close(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
        self._folder.cleanup()


def job_command(job: str) -> JobCommand:
    """A job to start fresh: a Python file that runs it through ``mlrepro.job_main``, or a module
    run as ``python -m MODULE`` (``projects.linefit``), found in the current folder or on PYTHONPATH.
    Only a file check: nothing the user names is imported here."""
    path = Path(job)
    if path.suffix == ".py" and path.is_file():
        return JobCommand([sys.executable, str(path.resolve())], Path.cwd(), [str(path.resolve().parent)])
    if _MODULE_NAME.match(job):
        relative = Path(*job.split("."))
        for folder in [Path.cwd(), *(Path(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry)]:
            if (folder / relative / "__main__.py").is_file() or (folder / relative).with_suffix(".py").is_file():
                return JobCommand([sys.executable, "-m", job], Path.cwd(), [str(folder.resolve())])
    raise SpecError(f"JOB: {job!r} is neither a Python file nor a module (python -m MODULE) in this folder "
                    "or on PYTHONPATH that runs a job")
