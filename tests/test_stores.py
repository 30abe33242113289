"""Many runs writing at once into one store: every step of every run arrives, in order, bit for bit.

Eight jobs into one team server (PostgreSQL behind `mlflow server`), and four into one SQLite
file, where writers queue for the file's lock ("database is locked"); a failed write waits in
the run's spool and is sent again."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.conftest import experiment, job_env
from tests.helpers.server import MlflowServer

STEPS = 10_000

LOGGING_JOB = """
import sys
from mlrepro import start_run
from projects.linefit.spec import LineFitSpec

index, steps = int(sys.argv[1]), int(sys.argv[2])
with start_run(LineFitSpec(seed=index, steps=steps)) as run:
    for step in range(steps):
        run.log_loss(index + step / steps)
"""


def expected(index: int) -> np.ndarray:
    return np.array([index + step / STEPS for step in range(STEPS)], dtype=np.float64)


def log_at_once(uri: str, cwd: Path, runs: int) -> None:
    """``runs`` jobs started together, each logging STEPS steps; all must succeed."""
    started = time.monotonic()
    jobs = [subprocess.Popen([sys.executable, "-c", LOGGING_JOB, str(index), str(STEPS)], cwd=cwd,
                             env=job_env(uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for index in range(runs)]
    errors = [job.communicate(timeout=600)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * runs, errors
    print(f"{runs} runs x {STEPS:,} steps into {uri}: {time.monotonic() - started:.1f} s")


def assert_every_step_of_every_run(uri: str, runs: int) -> None:
    client = mlflow.MlflowClient(uri)
    found = client.search_runs([experiment()])
    assert sorted(int(run.data.params["seed"]) for run in found) == list(range(runs))
    counted = 0
    for run in found:
        history = client.get_metric_history(run.info.run_id, "loss")
        steps = [point.step for point in history]
        assert sorted(steps) == list(range(STEPS)), run.info.run_id  # each step once: none lost, none twice
        values = np.array([point.value for point in sorted(history, key=lambda point: point.step)])
        assert values.tobytes() == expected(int(run.data.params["seed"])).tobytes()
        assert run.info.status == "FINISHED"
        counted += len(steps)
    assert counted == runs * STEPS


@pytest.mark.e2e
@pytest.mark.team
def test_eight_runs_logging_at_once_into_one_team_server_lose_no_step(
    tmp_path: Path, team_server: MlflowServer, team_experiment: str
) -> None:
    log_at_once(team_server.uri, tmp_path, 8)
    assert_every_step_of_every_run(team_server.uri, 8)


@pytest.mark.e2e
def test_four_runs_logging_at_once_into_one_sqlite_file_lose_no_step(tmp_path: Path, store: str) -> None:
    log_at_once(store, tmp_path, 4)
    assert_every_step_of_every_run(store, 4)
