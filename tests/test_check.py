"""mlrepro check: the smoke test before a long run. Fresh runs must agree, a resumed run must equal the
full one, a broken resume must differ (so the check can fail), and the verdict is recorded in MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro.cli.main import main
from tests.conftest import (
    REPO,
    assert_one_line_error,
    assert_one_line_error_here,
    mlrepro_cli,
    run_command,
    run_here,
)

PLANTED = str(REPO / "tests" / "jobs" / "planted.py")


def check(store: str, cwd: Path, *words: str, **env: str) -> tuple[int, dict, str]:
    result = run_command([sys.executable, "-m", "mlrepro", "check", "--json", *words], store, cwd, **env)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout), result.stderr


def legs(result: dict) -> dict[str, tuple[str, str]]:
    return {leg["leg"]: (leg["status"], leg["got"]) for leg in result["legs"]}


@pytest.mark.e2e
def test_the_line_fit_passes_every_leg_and_the_verdict_is_recorded_beside_its_runs(tmp_path: Path, store: str) -> None:
    code, result, _ = check(store, tmp_path, "projects.linefit", "steps=500", "--steps", "12", "--resume-at", "5")
    assert code == 0, result
    found = legs(result)
    assert found["two fresh runs, 12 steps"][0] == "pass"
    assert found["resumed at step 5 vs the full run"] == ("pass", found["resumed at step 5 vs the full run"][1])
    # The broken leg differs where the broken checkpoint starts: the proof that the check can fail.
    assert found["broken resume (weights one ulp off)"] == ("pass", "different from step 5: 0.weight (parameter, optimizer)")
    assert found["deterministic=true vs false"][0] == "timing"
    run = mlflow.MlflowClient(store).get_run(result["recorded_run"])
    assert run.data.tags["mlrepro.determinism_checked"].startswith(
        "passed: two fresh runs of 12 steps identical, resumed at step 5 identical, broken resume caught")
    assert run.data.tags["mlrepro.job"] == "linefit" and run.data.params["steps"] == "500"
    assert run.info.status == "FINISHED"
    # The legs logged into a scratch store: the user's holds only the verdict's run.
    assert len(mlflow.MlflowClient(store).search_runs(["0"])) == 1
    # Words the job refuses are its one line, asked of the job before any store or leg is made.
    assert_one_line_error(mlrepro_cli(store, tmp_path, "check", "projects.linefit", "lr=-1", "--steps", "4"),
                          "-m projects.linefit lr=-1: invalid linefit spec: lr: must be greater than 0")


@pytest.mark.e2e
def test_a_job_drawing_from_an_unseeded_generator_fails_at_the_step_it_starts(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANT_UNSEEDED_FROM", "7")  # the legs' processes inherit it
    checked = run_here(main, "check", "--json", PLANTED, "--steps", "12")  # the command here, its legs not
    code, result = checked.exit_code, json.loads(checked.stdout)
    assert code == 1, checked.stderr[-3000:]
    assert result["passed"] is False and result["first_divergent_step"] == 7
    status, got = legs(result)["two fresh runs, 12 steps"]
    assert status == "fail" and got.startswith("different from step 7")
    assert legs(result)["resumed at step 6 vs the full run"][0] == "skipped"
    tag = mlflow.MlflowClient(store).get_run(result["recorded_run"]).data.tags["mlrepro.determinism_checked"]
    assert tag.startswith("failed: two fresh runs, 12 steps: different from step 7")


def test_bad_input_is_one_line_before_any_leg_starts(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_one_line_error_here(run_here(main, "check", "resnet"), "neither a Python file nor a module")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # where projects.linefit is found
    assert_one_line_error_here(run_here(main, "check", "projects.linefit", "checkpoint_every=3"),
                               "checkpoint_every: set by the check itself")
