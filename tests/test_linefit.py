"""The line-fit job: the seed's losses bit for bit, and a run that repeats in a new process."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlrepro import load_run
from mlrepro.cli.job import job_command
from projects.linefit.spec import LineFitSpec
from projects.linefit.train import train
from tests.conftest import REPO, only_run_id, run_command, run_here, run_linefit

SEED_SCRIPTS = REPO / "tests" / "seed_scripts"


def seed_script_losses(tmp_path: Path, store: str) -> tuple[np.ndarray, str]:
    """The 1000 losses of the seed's own script with torch.manual_seed(3), in its own process."""
    out = tmp_path / "seed_losses.npy"
    result = run_command(
        [sys.executable, str(SEED_SCRIPTS / "record_losses.py"), str(SEED_SCRIPTS / "linefit_seed.py"), str(out)],
        store,
        tmp_path,
        CUDA_VISIBLE_DEVICES="",  # the comparison is made on the CPU, where the job runs here
    )
    assert result.returncode == 0, result.stderr
    return np.load(out), result.stdout


@pytest.mark.e2e
def test_seed_3_losses_equal_the_seed_scripts_bit_for_bit(tmp_path: Path, store: str) -> None:
    expected, seed_stdout = seed_script_losses(tmp_path, store)
    assert len(expected) == 1000

    job = run_linefit(store, tmp_path, "seed=3", "device=cpu")
    assert job.returncode == 0, job.stderr
    logged = load_run(only_run_id(store))

    assert logged.loss_source == "artifact"
    np.testing.assert_array_equal(logged.losses.steps, np.arange(1000))
    assert logged.losses.values.view(np.uint64).tolist() == expected.view(np.uint64).tolist()
    # The metric history (what the UI shows) holds the same bits too.
    history = mlflow.MlflowClient().get_metric_history(logged.run_id, "loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == expected.tolist()
    # And the job prints what the seed prints, every 100 steps.
    seed_lines = [line for line in seed_stdout.splitlines() if line[:1].isdigit()]
    job_lines = [line for line in job.stdout.splitlines() if line[:1].isdigit()]
    assert job_lines == seed_lines and len(job_lines) == 10


def test_steps_and_lr_come_from_the_spec(store: str) -> None:
    result = run_here(job_command(LineFitSpec, train), "steps=20", "lr=1e-3", "hidden=10")
    assert result.exit_code == 0, result.stderr
    run = load_run(only_run_id(store))
    assert len(run.losses) == 20
    assert run.spec is not None and run.spec.lr == 1e-3 and run.spec.hidden == 10
