"""start_run: a seeded, recorded MLflow run that keeps every step's loss, even when it fails."""

from __future__ import annotations

import math
import random

import mlflow
import numpy as np
import pytest
import torch

from mlrepro import load_run, start_run
from mlrepro.errors import DeviceError, TrackingError
from mlrepro.store import keys
from projects.linefit.spec import LineFitSpec


def test_the_run_carries_spec_params_environment_tags_and_json_artifacts(store: str) -> None:
    spec = LineFitSpec(seed=6, steps=5)
    with start_run(spec) as run:
        for step in range(5):
            run.log_loss(torch.tensor(1.0 / (step + 1)))

    logged = mlflow.MlflowClient().get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["seed"] == "6" and logged.data.params["steps"] == "5"
    tags = logged.data.tags
    assert tags[keys.TAG_SPEC_HASH] == spec.hash and tags[keys.TAG_ENV_HASH] == run.environment.hash
    assert tags[keys.TAG_JOB] == "linefit"
    assert tags["mlrepro.environment.torch.version"] == run.environment.facts["torch.version"]
    assert tags["mlrepro.environment.determinism.deterministic_algorithms"] == "true"
    assert tags["mlrepro.environment.run.device"] == "cpu"
    spec_json = mlflow.artifacts.load_dict(f"{logged.info.artifact_uri}/{keys.SPEC_ARTIFACT}")
    assert LineFitSpec.model_validate(spec_json) == spec
    seeding = mlflow.artifacts.load_dict(f"{logged.info.artifact_uri}/{keys.SEED_ARTIFACT}")
    assert seeding["seed"] == 6 and seeding["state"]["cudnn_deterministic"] is True


def test_every_step_is_logged_in_order_as_metric_loss(store: str) -> None:
    values = np.random.default_rng(1).random(2500) * 100
    with start_run(LineFitSpec(steps=2500)) as run:
        for value in values:
            run.log_loss(float(value))
    history = sorted(mlflow.MlflowClient().get_metric_history(run.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(2500))
    assert np.array([m.value for m in history]).tobytes() == values.tobytes()
    assert mlflow.MlflowClient().get_run(run.run_id).info.run_name == "linefit, 2500 steps"  # not "fortunate-wren-835"


def test_a_failing_run_ends_failed_with_every_loss_before_the_error(store: str) -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        with start_run(LineFitSpec(steps=10)) as run:
            for step in range(1234):
                run.log_loss(float(step))
            raise RuntimeError("diverged")
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FAILED"
    logged = load_run(run.run_id)
    assert logged.losses.steps.tolist() == list(range(1234))
    assert logged.status == "FAILED"


def test_infinities_and_nan_payloads_survive_in_the_exact_record(store: str) -> None:
    weird = [math.inf, -math.inf, float(np.float64(np.nan)), -0.0, 1.7976931348623157e308]
    with start_run(LineFitSpec()) as run:
        for value in weird:
            run.log_loss(value)
    logged = load_run(run.run_id)
    assert logged.loss_source == "artifact"
    assert logged.losses.values.tobytes() == np.array(weird).tobytes()


def test_the_loop_starts_from_freshly_seeded_generators(store: str) -> None:
    """MLflow draws from Python's random for run names; the loop must not see that."""
    random.seed(8)
    expected = random.random()
    with start_run(LineFitSpec(seed=8)):
        assert random.random() == expected


def test_a_run_opened_by_the_mlflow_run_launcher_is_resumed(store: str, monkeypatch) -> None:
    """`mlflow run` creates the run and logs the parameters as typed; the job resumes it."""
    client = mlflow.MlflowClient()
    launched = client.create_run("0")
    client.log_param(launched.info.run_id, "lr", "1e-4")  # as typed, not as Python prints it
    monkeypatch.setenv("MLFLOW_RUN_ID", launched.info.run_id)
    with start_run(LineFitSpec(lr=1e-4)) as run:
        run.log_loss(1.0)
    assert run.run_id == launched.info.run_id
    assert client.get_run(run.run_id).info.run_name == launched.info.run_name  # the launcher's name stays
    params = client.get_run(run.run_id).data.params
    assert params["lr"] == "1e-4" and params["seed"] == "3"


def test_a_missing_device_is_refused_before_a_run_exists(store: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="device: cuda was asked for"):
        with start_run(LineFitSpec(device="cuda")):
            pass
    assert mlflow.MlflowClient().search_runs(["0"]) == []


def test_an_unreachable_server_is_a_tracking_error(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    try:
        with pytest.raises(TrackingError, match="cannot reach the tracking server at http://127.0.0.1:9"):
            with start_run(LineFitSpec()):
                pass
    finally:
        mlflow.set_tracking_uri(None)


def test_once_the_run_is_delivered_its_end_asks_the_store_nothing(store: str, monkeypatch) -> None:
    """A tracking server that goes away once it holds the whole run must not keep the job waiting
    on MLflow's retries: leaving the run is done in this process, as every store call is pointed
    at a port nothing listens on the moment the run is delivered."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with start_run(LineFitSpec(steps=3)) as run:
        for step in range(3):
            run.log_loss(float(step))
        finish = run.finish

        def finish_then_lose_the_store(status: str):
            pending = finish(status)
            mlflow.set_tracking_uri("http://127.0.0.1:9")
            return pending

        run.finish = finish_then_lose_the_store
    try:
        assert mlflow.active_run() is None
        assert mlflow.tracking.fluent._last_active_run_id.get() == run.run_id
    finally:
        mlflow.set_tracking_uri(store)
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FINISHED"


def test_a_switch_changed_after_the_run_opened_is_recorded_as_training_found_it(store: str) -> None:
    # As Lightning's Trainer(deterministic=False) or a script's own line would, once start_run has set it.
    try:
        with start_run(LineFitSpec(steps=2)) as run:
            torch.backends.cudnn.benchmark = True
            run.log_loss(1.0)
            torch.backends.cudnn.benchmark = False  # changed back: the first step's reading stays
            run.log_loss(0.5)
    finally:
        torch.backends.cudnn.benchmark = False
    logged = load_run(run.run_id)
    tags = mlflow.MlflowClient().get_run(run.run_id).data.tags
    assert tags[keys.TAG_ENVIRONMENT_CHANGED] == "determinism.cudnn_benchmark: false -> true"
    assert logged.environment["determinism.cudnn_benchmark"] == "true"
    assert tags["mlrepro.environment.determinism.cudnn_benchmark"] == "true"
    assert tags[keys.TAG_ENV_HASH] == run.environment.hash != run.opened_environment.hash


def test_a_run_whose_switches_stay_as_opened_has_no_change_noted(store: str) -> None:
    with start_run(LineFitSpec(steps=1)) as run:
        run.log_loss(1.0)
    assert keys.TAG_ENVIRONMENT_CHANGED not in mlflow.MlflowClient().get_run(run.run_id).data.tags
