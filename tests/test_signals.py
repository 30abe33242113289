"""Every ending is recorded: SIGINT and SIGTERM end a run KILLED with every step handed over in MLflow,
directly, to the process group, and under `mlflow run`; after SIGKILL the run is found orphaned and marked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlrepro import load_run
from mlrepro.cli.job import job_command
from mlrepro.cli.main import main
from mlrepro.training.signals import Interruption, interruptible
from projects.linefit.spec import LineFitSpec
from projects.linefit.train import train
from tests.conftest import REPO, job_env, mlrepro_cli, only_run_id, run_here


def start(store: str, cwd: Path, command: list[str], **extra_env: str) -> subprocess.Popen[str]:
    """A job in a process group of its own, as a shell starts a command (Ctrl-C reaches the whole group)."""
    return subprocess.Popen(command, cwd=cwd, env=job_env(store, PYTHONHASHSEED="0", **extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_steps(store: str, at_least: int) -> str:
    """The newest run's id, once its metric history has ``at_least`` steps."""
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = client.search_runs(["0"], order_by=["attributes.start_time DESC"])
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= at_least:
            return runs[0].info.run_id
        time.sleep(0.1)
    raise AssertionError(f"no run reached {at_least} steps")


def assert_killed_with_every_step(run_id: str, steps: int, launched: bool = False) -> None:
    """KILLED, the exact record holds ``steps`` steps, and the metric history holds the same ones.

    `mlflow run` answers Ctrl-C by marking its run FAILED, even after the job has ended it KILLED:
    the run's tag keeps the truth, and mlrepro reads it."""
    client = mlflow.MlflowClient()
    tags = client.get_run(run_id).data.tags
    assert client.get_run(run_id).info.status in (("KILLED", "FAILED") if launched else ("KILLED",))
    assert tags["mlrepro.ended"].startswith("KILLED by SIG")
    run = load_run(run_id)
    assert run.status == "KILLED"
    assert run.loss_source == "artifact" and len(run.losses) == steps
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert [step for step, _ in history] == list(range(steps))
    assert np.array([value for _, value in history]).tobytes() == run.losses.values.tobytes()


def stopped_after(stderr: str, name: str) -> int:
    line = next(line for line in stderr.splitlines() if f"stopped by {name} after" in line)
    assert line.endswith("steps; every step is recorded, and the run is KILLED"), line
    return int(line.split(" after ")[1].split()[0])


def test_a_process_forked_while_a_run_trains_gets_the_default_handlers_back() -> None:
    """A DataLoader worker is forked from the run's process but is not the run: SIGTERM to the group
    must kill it at once, and Ctrl-C reach it as a plain KeyboardInterrupt, never RunInterrupted."""
    with interruptible():
        assert isinstance(signal.getsignal(signal.SIGTERM).__self__, Interruption)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its handlers, and leave without running anything of pytest's
            handlers = (signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                        signal.getsignal(signal.SIGINT) is signal.default_int_handler)
            os.write(write, repr(handlers).encode())
            os._exit(0)
        os.close(write)
        said = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
    assert said == "(True, True)"


def test_a_signal_once_every_step_is_saved_ends_the_job_as_asked_and_leaves_the_run_finished(store: str) -> None:
    """SIGTERM after the loop's last step, while the store takes the spool: the run is whole, so it
    stays FINISHED (compare reads it as complete, which it is), and the job still exits 143."""

    def train_then_term_while_saving(spec: LineFitSpec, run) -> None:
        train(spec, run)
        finish = run.finish

        def term_then_finish(status: str):
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread at once: the run is saving
            return finish(status)

        run.finish = term_then_finish

    result = run_here(job_command(LineFitSpec, train_then_term_while_saving), "steps=20")
    assert result.exit_code == 128 + signal.SIGTERM, result.stderr
    run_id = only_run_id(store)
    assert result.stderr.strip().splitlines()[-1] == (
        f"mlrepro: run {run_id} stopped by SIGTERM once it had trained and saved all 20 steps; "
        "every step is recorded, and the run is FINISHED")
    run = load_run(run_id)
    assert run.status == "FINISHED" and len(run.losses) == 20 and run.loss_source == "artifact"
    assert "mlrepro.ended" not in run.tags


@pytest.mark.e2e
def test_sigterm_to_the_job_ends_it_killed_with_every_step_and_the_steps_are_the_runs_own(
    tmp_path: Path, store: str
) -> None:
    job = start(store, tmp_path, [sys.executable, "-m", "projects.linefit", "steps=1000000"])
    run_id = wait_for_steps(store, 2000)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    steps = stopped_after(stderr, "SIGTERM")
    assert_killed_with_every_step(run_id, steps)

    # They are the first steps of the same job run to its end: identical so far, never "nondeterminism".
    assert run_here(job_command(LineFitSpec, train), f"steps={steps + 5}").exit_code == 0
    verdict = run_here(main, "compare", "--json", run_id, only_run_id(store))
    assert verdict.exit_code == 3, verdict.stdout + verdict.stderr
    compared = json.loads(verdict.stdout)
    assert compared["verdict"] == "identical so far" and compared["losses"]["steps_in_both"] == steps
    assert compared["diagnosis"].startswith(f"identical so far: A stopped at step {steps - 1} (KILLED)")


@pytest.mark.e2e
def test_sigterm_to_the_process_group_stops_loader_workers_too_and_the_run_ends_killed(
    tmp_path: Path, store: str
) -> None:
    job = start(store, tmp_path, [sys.executable, "-m", "projects.cifar10", "dataset=fake", "train_limit=20000",
                                  "test_limit=40", "num_workers=2", "checkpoint_every=0"])
    run_id = wait_for_steps(store, 300)
    os.killpg(job.pid, signal.SIGTERM)  # the job, its writer and its DataLoader workers
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert_killed_with_every_step(run_id, stopped_after(stderr, "SIGTERM"))


@pytest.mark.e2e
def test_ctrl_c_under_mlflow_run_ends_the_run_killed_with_every_step(tmp_path: Path, store: str) -> None:
    launcher = start(store, tmp_path, [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                                       "-P", "steps=1000000"])
    run_id = wait_for_steps(store, 2000)
    os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the launcher, the job, the writer
    _, stderr = launcher.communicate(timeout=120)
    job_lines = [line for line in stderr.splitlines() if "stopped by SIGINT" in line]
    assert job_lines, stderr[-3000:]
    assert_killed_with_every_step(run_id, stopped_after(stderr, "SIGINT"), launched=True)


COUNTING_JOB = """
import sys, time
from mlrepro import start_run
from projects.linefit.spec import LineFitSpec

with start_run(LineFitSpec(steps=10**6)) as run:
    for step in range(10**6):
        run.log_loss(step / 7)
        print(step, flush=True)  # handed over: the test counts what is lost beyond this
        time.sleep(0.0005)
"""


@pytest.mark.e2e
def test_after_sigkill_the_orphaned_run_is_named_and_marked_killed_and_what_is_lost_is_measured(
    tmp_path: Path, store: str
) -> None:
    job = start(store, tmp_path, [sys.executable, "-c", COUNTING_JOB])
    run_id = wait_for_steps(store, 1000)
    os.killpg(job.pid, signal.SIGKILL)  # the job and its writer, as `kill -9 -PGID` or an OOM killer's cgroup kill
    stdout, _ = job.communicate(timeout=60)
    handed_over = int(stdout.split()[-1]) + 1
    client = mlflow.MlflowClient()

    shown = run_here(main, "show", run_id)
    assert f"run {run_id} (RUNNING, its process gone: killed without a chance to say so)" in shown.stdout
    # The spool holds what the writer had not delivered; marking the run delivers it first.
    marked = mlrepro_cli(store, tmp_path, "mark-killed", run_id[:8])
    assert marked.returncode == 0, marked.stderr
    delivered, mark = marked.stdout.splitlines()
    assert delivered.startswith(f"run {run_id}: delivered ") and delivered.endswith("nothing pending"), delivered
    logged = len(client.get_metric_history(run_id, "loss"))
    lost = handed_over - logged
    print(f"SIGKILL to the group after {handed_over} steps handed over: {logged} in MLflow, {lost} lost")
    assert 0 <= lost <= 400  # at most the last 0.1 s not yet spooled, at ~1,500 steps/s here
    assert mark.startswith(f"marked run {run_id} KILLED: its process is gone; it logged {logged} steps"), mark
    assert client.get_run(run_id).info.status == "KILLED"
    again = run_here(main, "mark-killed", run_id)
    assert again.exit_code == 2 and "is KILLED, not RUNNING" in again.stderr
