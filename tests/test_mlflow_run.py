"""The README's path end to end: `mlflow run` the project twice, compare, then another seed."""

from __future__ import annotations

from pathlib import Path

import mlflow

from tests.conftest import mlflow_run, mlrepro_cli, only_run_id


def launched(store: str, cwd: Path, *params: str) -> str:
    result = mlflow_run(store, cwd, *params)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_id(store)


def test_mlflow_run_twice_is_identical_and_another_seed_differs_from_step_0(tmp_path: Path, store: str) -> None:
    first = launched(store, tmp_path)
    second = launched(store, tmp_path)
    other_seed = launched(store, tmp_path, "seed=4")

    run = mlflow.MlflowClient().get_run(first)
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.data.params["seed"] == "3"
    assert run.data.tags["mlrepro.env.PYTHONHASHSEED"] == "0"  # fixed by the MLproject command
    assert run.data.tags["mlrepro.determinism.hash_randomization"] == "false"

    same = mlrepro_cli(store, tmp_path, "compare", first, second)
    assert same.returncode == 0 and same.stdout.startswith("identical:"), same.stdout + same.stderr
    assert "1000 losses" in same.stdout

    different = mlrepro_cli(store, tmp_path, "compare", first, other_seed)
    assert different.returncode == 1
    assert "first differ at step 0" in different.stdout


def test_a_bad_parameter_fails_the_launched_run_and_says_why(tmp_path: Path, store: str) -> None:
    result = mlflow_run(store, tmp_path, "lr=-1")
    assert result.returncode != 0
    assert "mlrepro: error: invalid linefit spec: lr: must be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr
    run = mlflow.MlflowClient().get_run(only_run_id(store))
    assert run.info.status == "FAILED"
    assert run.data.tags["mlrepro.error"].startswith("invalid linefit spec: lr:")
    assert mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss") == []
