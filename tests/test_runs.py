"""load_run and compare_runs: typed records from any MLflow run, and the errors a user can hit."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlrepro import compare_runs, load_run, start_run
from mlrepro.cli.main import main
from mlrepro.errors import NoLossesError, RunNotFoundError, TrackingError
from mlrepro.store import keys
from projects.linefit.spec import LineFitSpec
from tests.conftest import (
    assert_one_line_error_here,
    only_run_id,
    run_command,
    run_here,
)


def logged_run(seed: int, losses: list[float]) -> str:
    with start_run(LineFitSpec(seed=seed, steps=len(losses))) as run:
        for value in losses:
            run.log_loss(value)
    return run.run_id


def test_load_run_gives_the_spec_environment_and_losses(store: str) -> None:
    run_id = logged_run(4, [3.0, 2.0, 1.0])
    run = load_run(run_id)
    assert run.run_id == run_id and run.status == "FINISHED"
    assert run.spec == LineFitSpec(seed=4, steps=3)
    assert run.spec_fields["seed"] == "4"
    assert run.environment["run.device"] == "cpu" and "torch.version" in run.environment
    assert run.losses.values.tolist() == [3.0, 2.0, 1.0] and run.loss_source == "artifact"


def test_a_plain_mlflow_run_is_read_from_its_metric_history(store: str) -> None:
    with mlflow.start_run() as plain:
        mlflow.log_param("seed", "1")
        for step, value in enumerate([0.5, 0.25]):
            mlflow.log_metric("loss", value, step=step)
    run = load_run(plain.info.run_id)
    assert run.spec is None and run.spec_fields == {"seed": "1"}
    assert run.loss_source == "metric history" and run.losses.values.tolist() == [0.5, 0.25]


def test_compare_runs_takes_ids_or_records(store: str) -> None:
    a, b, c = logged_run(1, [1.0, 2.0]), logged_run(1, [1.0, 2.0]), logged_run(2, [1.0, 2.5])
    assert compare_runs(a, b).identical
    verdict = compare_runs(load_run(a), c)
    assert not verdict.identical and verdict.first_divergent_step == 1
    assert [(d.key, d.value_a, d.value_b) for d in verdict.differences] == [("seed", "1", "2")]


def test_an_unknown_run_is_named(store: str) -> None:
    with pytest.raises(RunNotFoundError, match="no run 'deadbeef'"):
        load_run("deadbeef")
    with pytest.raises(RunNotFoundError, match="'3bc4067' is too short to name a run: give at least 8 digits"):
        load_run("3bc4067")


def test_a_run_compared_with_itself_is_refused_not_called_identical(store: str) -> None:
    run_id = logged_run(1, [1.0, 2.0])
    for words in (["compare", run_id, run_id[:8]], ["compare", "--log", run_id, run_id]):
        assert_one_line_error_here(run_here(main, *words), f"both ids name run {run_id}", "give two runs")


def test_a_run_without_losses_is_refused(store: str) -> None:
    with mlflow.start_run() as empty:
        mlflow.log_param("seed", "1")
    with pytest.raises(NoLossesError, match="logged no 'loss' metric"):
        load_run(empty.info.run_id)


def test_an_unreachable_server_is_a_tracking_error(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(TrackingError, match="cannot reach the tracking server"):
        load_run("abcdef0123", client=mlflow.MlflowClient("http://127.0.0.1:9"))


KILLED_AFTER_A_FLUSH = """
import math, os, signal, time
import mlflow
from mlrepro import start_run
from projects.linefit.spec import LineFitSpec

with start_run(LineFitSpec()) as run:
    for step in range(100):
        run.log_loss(math.nan if step == 10 else step / 3)
    run.flush()
    for step in range(100, 150):
        run.log_loss(step / 3)
    deadline = time.monotonic() + 120
    while len(mlflow.MlflowClient().get_metric_history(run.run_id, "loss")) < 150:
        if time.monotonic() > deadline:
            raise SystemExit("the writer never shipped steps 100-149")
        time.sleep(0.05)  # the writer ships these on its own
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.e2e
def test_a_killed_run_reads_exactly_up_to_its_last_flush_then_from_the_metric_history(
    store: str, tmp_path: Path
) -> None:
    killed = run_command([sys.executable, "-c", KILLED_AFTER_A_FLUSH], store, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = load_run(only_run_id(store))
    assert run.status == "RUNNING" and keys.TAG_LOSS_DIGEST not in run.tags
    assert run.loss_source == "artifact to step 99, metric history after"
    expected = np.array([math.nan if step == 10 else step / 3 for step in range(150)])
    assert run.losses.steps.tolist() == list(range(150))
    assert run.losses.values.tobytes() == expected.tobytes()  # NaN's bits too, from the flushed record


def test_a_lookup_never_creates_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a folder with no mlflow.db and no MLFLOW_TRACKING_URI, MLflow would make an empty,
    migrated store there; a lookup says there is none instead, in one line, and leaves nothing."""
    from mlrepro.cli.main import main
    from tests.conftest import assert_one_line_error_here, run_here

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    with pytest.raises(TrackingError, match=f"no tracking store at {tmp_path / 'mlflow.db'}"):
        load_run("0123456789abcdef")
    assert_one_line_error_here(run_here(main, "compare", "01234567", "89abcdef"), "no tracking store at")
    assert_one_line_error_here(run_here(main, "find", "--job", "linefit"), "no tracking store at")
    assert list(tmp_path.iterdir()) == []


def test_records_already_loaded_compare_without_any_store(store: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = load_run(logged_run(1, [1.0, 2.0])), load_run(logged_run(1, [1.0, 2.0]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    assert compare_runs(a, b).identical
    assert list(elsewhere.iterdir()) == []
