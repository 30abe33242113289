"""Per-step logging off the training thread: every step arrives, in order, bit for bit, whatever happens."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlrepro import load_run, start_run
from mlrepro.store.opening import sqlite_schema_is_current
from mlrepro.store.writer import wait_for_exit
from projects.linefit.spec import LineFitSpec


def history(run_id: str) -> list[tuple[int, float]]:
    points = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    return sorted((m.step, m.value) for m in points)


def test_steps_reach_mlflow_while_the_run_is_still_going(store: str) -> None:
    with start_run(LineFitSpec()) as run:
        for step in range(1500):
            run.log_loss(float(step))
        deadline = time.monotonic() + 60
        while len(history(run.run_id)) < 1500 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(history(run.run_id)) == 1500  # the UI's chart follows a live run
        run.log_loss(1500.0)
    assert [step for step, _ in history(run.run_id)] == list(range(1501))


def test_tensors_and_floats_arrive_in_order_with_exact_bits(store: str) -> None:
    values = np.random.default_rng(3).standard_normal(3000).astype(np.float32)
    with start_run(LineFitSpec()) as run:
        for i, value in enumerate(values):
            run.log_loss(torch.tensor(value) if i % 2 else float(value))
    logged = history(run.run_id)
    assert [step for step, _ in logged] == list(range(3000))
    assert np.array([v for _, v in logged]).tobytes() == values.astype(np.float64).tobytes()
    assert load_run(run.run_id).losses.values.tobytes() == values.astype(np.float64).tobytes()


def test_if_the_writer_process_dies_this_process_delivers_the_rest_from_the_spool(store: str, spool_dir: Path) -> None:
    with start_run(LineFitSpec()) as run:
        for step in range(500):
            run.log_loss(float(step))
        run.flush()
        os.kill(run._writer._process.pid, signal.SIGKILL)  # what an OOM killer would do
        run._writer._process.wait()
        for step in range(500, 2500):
            run.log_loss(float(step))
    assert [value for _, value in history(run.run_id)] == [float(step) for step in range(2500)]
    assert not any(spool_dir.iterdir())  # delivered, so forgotten


def test_forked_loader_workers_do_not_keep_the_run_from_ending(store: str) -> None:
    """Workers forked while the writer's pipe is open must not hold it open."""
    dataset = TensorDataset(torch.arange(16.0))
    with start_run(LineFitSpec()) as run:
        loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True,
                            multiprocessing_context="fork")
        for (batch,) in loader:
            run.log_loss(batch.sum())
        started = time.monotonic()
    assert time.monotonic() - started < 60
    assert [value for _, value in history(run.run_id)] == [6.0, 22.0, 38.0, 54.0]
    del loader


def test_a_failing_run_has_every_step_before_the_error_in_the_metric_history(store: str) -> None:
    try:
        with start_run(LineFitSpec()) as run:
            for step in range(2345):
                run.log_loss(float(step) / 7)
            raise RuntimeError("out of memory")
    except RuntimeError:
        pass
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FAILED"
    assert history(run.run_id) == [(step, step / 7) for step in range(2345)]


def test_the_writer_opens_early_only_a_store_whose_schema_is_made(tmp_path: Path, store: str) -> None:
    # Opening a store whose schema is missing or half made would run MLflow's migrations
    # alongside the parent's, and one of the two would fail.
    made = Path(store[len("sqlite:///"):])
    assert sqlite_schema_is_current(made)
    missing = tmp_path / "missing.db"
    assert not sqlite_schema_is_current(missing) and not missing.exists()
    half_made = tmp_path / "half.db"
    with sqlite3.connect(half_made) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
    assert not sqlite_schema_is_current(half_made)


@pytest.mark.e2e
def test_waiting_for_the_writer_reaps_it_or_says_it_is_still_running() -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for_exit(done, timeout_s=60)
    assert done.returncode == 0
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_for_exit(hung, timeout_s=0.2)
        assert hung.returncode is None
    finally:
        hung.kill()
        hung.wait()


@pytest.mark.e2e
def test_the_zygote_ends_quietly_when_the_job_is_gone_before_its_writers_pid_is_read() -> None:
    """A signal during a job's start-up kills it while the zygote forks its writer: the zygote's answer
    then meets a closed socket, and it ends without a word on the job's stderr (a BrokenPipeError
    traceback before)."""
    import socket

    ours, theirs = socket.socketpair()
    zygote = subprocess.Popen([sys.executable, "-m", "mlrepro.store.zygote", str(theirs.fileno())],
                              pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    theirs.close()
    read_end, write_end = os.pipe()
    socket.send_fds(ours, [b"w"], [read_end])  # a writer's request, as a job makes it
    os.close(read_end)
    os.close(write_end)  # the writer meets the end of its run at once
    ours.close()  # the job is gone before the zygote answers
    _, stderr = zygote.communicate(timeout=60)
    assert zygote.returncode == 0 and stderr == ""


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads parent pids from /proc")
def test_each_runs_writer_is_forked_ready_by_the_zygote_and_a_dead_zygote_is_replaced(store: str) -> None:
    """A writer that imported MLflow again would cost every run a second or more at its end: the
    zygote, which imported it once, forks one per run, ahead of the run."""
    from mlrepro.store import zygote

    for _ in range(2):
        with start_run(LineFitSpec()) as run:
            run.log_loss(1.0)
            process = run._writer.process
            assert _parent_of(process.pid) == zygote._zygote.process.pid
        assert history(run.run_id) == [(0, 1.0)]
    zygote._zygote.process.kill()
    zygote._zygote.process.wait()
    with start_run(LineFitSpec()) as run:  # its writer was forked before the zygote died
        run.log_loss(2.0)
    with start_run(LineFitSpec()) as run:  # a new zygote, or a writer of its own
        run.log_loss(3.0)
    assert history(run.run_id) == [(0, 3.0)]


@pytest.mark.e2e
def test_the_next_runs_writer_is_forked_as_a_run_ends_unless_mlflow_run_started_the_process(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked as a run starts, the next run's writer opened its store on the cores the run was starting
    on; forked as it ends, it does so between runs. A process `mlflow run` started holds one run."""
    from mlrepro.store import zygote

    with start_run(LineFitSpec()) as run:
        run.log_loss(1.0)
        assert zygote._spare is None
    spare = zygote._spare
    assert spare is not None and spare.poll() is None
    with start_run(LineFitSpec()) as run:
        assert run._writer.process is spare
    zygote._spare.kill()
    zygote._spare = None
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    zygote.prepare_next(store)
    assert zygote._spare is None


def test_the_writer_yields_to_the_training_loop(store: str) -> None:
    """On a machine whose cores are all busy, the writer waits and the loop does not."""
    with start_run(LineFitSpec()) as run:
        run.log_loss(1.0)
        pid = run._writer.process.pid
        deadline = time.monotonic() + 10  # it lowers its priority first thing once forked
        while os.getpriority(os.PRIO_PROCESS, pid) <= os.getpriority(os.PRIO_PROCESS, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, pid) > os.getpriority(os.PRIO_PROCESS, 0)
    assert history(run.run_id) == [(0, 1.0)]
