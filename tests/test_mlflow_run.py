"""The README's path end to end: `mlflow run` the project twice, compare, then another seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro.cli.main import main
from tests.conftest import (
    REPO,
    assert_one_line_error,
    experiment,
    job_env,
    mlflow_run,
    mlrepro_cli,
    only_run_id,
    run_here,
)


def launched(store: str, cwd: Path, *params: str) -> str:
    result = mlflow_run(store, cwd, *params)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_id(store)


@pytest.mark.e2e
@pytest.mark.both_stores
def test_mlflow_run_twice_is_identical_and_another_seed_differs_from_step_0(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = launched(store, tmp_path)
    second = launched(store, tmp_path)
    other_seed = launched(store, tmp_path, "seed=4")

    run = mlflow.MlflowClient().get_run(first)
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.data.params["seed"] == "3"
    assert run.data.tags["mlrepro.environment.env.PYTHONHASHSEED"] == "0"  # fixed by the MLproject command
    assert run.data.tags["mlrepro.environment.determinism.hash_randomization"] == "false"

    same = mlrepro_cli(store, tmp_path, "compare", first, second)
    assert same.returncode == 0 and same.stdout.startswith("identical:"), same.stdout + same.stderr
    assert "1000 losses" in same.stdout

    different = run_here(main, "compare", first, other_seed)
    assert different.exit_code == 1
    assert "first differ at step 0" in different.stdout

    # Through MLflow: the comparison is a run of its own, FINISHED because the comparison was made,
    # and it carries the verdict, both runs' ids and the plot.
    comparison = mlflow_run(store, tmp_path, f"run_a={first}", f"run_b={other_seed}", entry_point="compare")
    assert comparison.returncode == 0, comparison.stderr[-3000:]
    client = mlflow.MlflowClient()
    made = client.get_run(only_run_id(store))
    assert made.info.status == "FINISHED"
    assert made.data.tags["mlrepro.compared.run_a"] == first and made.data.tags["mlrepro.compared.run_b"] == other_seed
    assert made.data.tags["mlrepro.compared.verdict"] == (
        "different from step 0: first tensor 0.weight (parameter, initial weights) at step 0 (likely cause: seed)")
    assert made.data.tags["mlrepro.compared.identical"] == "false"
    plots = [entry.path for entry in client.list_artifacts(made.info.run_id, "mlrepro/compare")]
    assert plots == [f"mlrepro/compare/{first}-vs-{other_seed}.png"]
    # A CI gate asks for a difference to fail the run: exactly what `-P fail_on_difference=true` passes on.
    gate_run = client.create_run(experiment()).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", gate_run)
    gate = run_here(main, "compare", first, other_seed, "--on-launched-run", "--fail-on-difference", "true")
    assert gate.exit_code == 1, gate.stderr
    assert f"recorded on run {gate_run}: the verdict and the plot" in gate.stdout
    assert client.get_run(gate_run).data.tags["mlrepro.compared.identical"] == "false"


@pytest.mark.e2e
def test_a_bad_or_mistyped_parameter_fails_the_launched_run_and_says_why(tmp_path: Path, store: str) -> None:
    # `sed` is not declared in the MLproject, so `mlflow run` passes it on as `--sed 4`.
    result = mlflow_run(store, tmp_path, "lr=-1", "sed=4")
    assert result.returncode != 0
    message = ("invalid linefit spec: lr: must be greater than 0 (got '-1'); sed: unknown field; did you mean seed? (allowed: "
               "checkpoint_every, deterministic, device, fingerprint_every, hidden, job, keep_checkpoints, lr, metric, resume_from, seed, steps, threads)")
    assert f"mlrepro: error: {message}" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr and "No such option" not in result.stderr
    run = mlflow.MlflowClient().get_run(only_run_id(store))
    assert run.info.status == "FAILED"
    assert run.data.tags["mlrepro.error"] == message
    assert mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss") == []


@pytest.mark.e2e
def test_a_job_started_in_an_environment_without_mlrepro_says_which_flag_it_needs(tmp_path: Path, store: str) -> None:
    """`mlflow run .` without `--env-manager local` runs the job in a new, empty virtualenv. `python -S`
    (no site-packages) is such a Python: the job names what it lacks and the flag, in one line."""
    env = dict(job_env(store), MLFLOW_RUN_ID="0" * 32)  # as the launcher starts it
    result = subprocess.run([sys.executable, "-S", "-m", "projects.linefit", "steps=3"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(result, "lacks click, pydantic, yaml, mlflow, torch",
                          "run with `mlflow run . --env-manager local`")
