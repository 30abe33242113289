"""Killed with SIGKILL at a step the test does not choose, resumed, and the stitched losses equal
the uninterrupted run's bit for bit: CIFAR-10 with two workers and a mid-epoch kill (a user's own job
is stopped and resumed in test_own_job.py; on a team server, a run resumes from its served
checkpoint here)."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro import load_run, start_run
from mlrepro.cli.job import job_command
from mlrepro.cli.main import main
from mlrepro.errors import MlreproError
from projects.cifar10.spec import Cifar10Spec
from projects.cifar10.train import train as cifar10_train
from projects.linefit.spec import LineFitSpec
from projects.linefit.train import train
from tests.conftest import (
    assert_one_line_error_here,
    kill_after_checkpoints,
    only_run_id,
    run_command,
    run_here,
    start_job,
    stopped_here,
)


def resume_and_compare(store: str, cwd: Path, job: str, killed: str, *assignments: str) -> None:
    resumed = run_command([sys.executable, "-m", f"projects.{job}", *assignments, f"resume_from={killed}"],
                          store, cwd, PYTHONHASHSEED="0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_id = only_run_id(store)
    whole = run_command([sys.executable, "-m", f"projects.{job}", *assignments], store, cwd, PYTHONHASHSEED="0")
    assert whole.returncode == 0, whole.stderr[-3000:]
    uninterrupted = only_run_id(store)

    client = mlflow.MlflowClient()
    tags = client.get_run(resumed_id).data.tags
    assert tags["mlrepro.resumed_from"] == killed and client.get_run(killed).data.tags["mlrepro.resumed_by"] == resumed_id
    resumed_at = int(tags["mlrepro.resumed_at_step"])
    assert 0 < resumed_at < len(load_run(uninterrupted).losses)
    verdict = run_here(main, "compare", resumed_id, uninterrupted)
    assert verdict.exit_code == 0, verdict.stdout + verdict.stderr
    assert f"logged the same {len(load_run(uninterrupted).losses)} losses, bit for bit" in verdict.stdout


@pytest.mark.e2e
def test_a_killed_cifar10_run_with_two_workers_resumes_bit_for_bit(tmp_path: Path, store: str) -> None:
    # 300 steps an epoch; checkpoints every 50 steps land mid-epoch and at its end.
    spec = ["dataset=fake", "train_limit=1200", "test_limit=40", "epochs=2", "num_workers=2", "checkpoint_every=50"]
    job = start_job(store, tmp_path, [sys.executable, "-m", "projects.cifar10", *spec])
    killed = kill_after_checkpoints(store, job, at_least=3)
    resume_and_compare(store, tmp_path, "cifar10", killed, *spec)


@pytest.mark.e2e
@pytest.mark.parametrize("store", [pytest.param("team", marks=pytest.mark.team)], indirect=True)
def test_on_a_team_server_a_cifar10_run_resumes_from_its_served_checkpoint_bit_for_bit(
    tmp_path: Path, store: str
) -> None:
    """The team's path: checkpoints uploaded to the server's artifacts, downloaded to resume, and the
    stitched losses compared through it. The jobs run here; a SIGKILL at a moment the test does not
    choose is proven above and under torchrun, and would only make this run longer: a server sees a
    checkpoint later than a SQLite file does, so the kill needs a long run to land mid-run."""
    cifar10 = job_command(Cifar10Spec, cifar10_train)
    spec = ["dataset=fake", "train_limit=400", "test_limit=40", "epochs=2", "num_workers=2", "checkpoint_every=30"]
    stopped_id = stopped_here(cifar10, *spec, after=130, folder=tmp_path)  # 100 steps an epoch: in the second
    resumed = run_here(cifar10, *spec, f"resume_from={stopped_id}")
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    resumed_id = only_run_id(store)
    assert run_here(cifar10, *spec).exit_code == 0
    whole = only_run_id(store)

    tags = mlflow.MlflowClient().get_run(resumed_id).data.tags
    assert (tags["mlrepro.resumed_from"], tags["mlrepro.resumed_at_step"]) == (stopped_id, "120")
    verdict = run_here(main, "compare", resumed_id, whole)
    assert verdict.exit_code == 0, verdict.stdout + verdict.stderr
    assert "logged the same 200 losses, bit for bit" in verdict.stdout


def test_a_tampered_checkpoint_stops_the_resume_with_one_line(store: str, tmp_path: Path) -> None:
    linefit = job_command(LineFitSpec, train)
    spec = ["steps=60", "checkpoint_every=20"]
    original = stopped_here(linefit, *spec, after=50, folder=tmp_path)  # its newest checkpoint: step 40
    artifacts = Path(mlflow.MlflowClient().get_run(original).info.artifact_uri.removeprefix("file://"))
    newest = artifacts / "mlrepro" / "checkpoints" / "step-000000040.pt"
    data = bytearray(newest.read_bytes())
    data[-200:-100] = bytes(100)
    newest.write_bytes(bytes(data))
    assert_one_line_error_here(run_here(linefit, *spec, f"resume_from={original}"),
                               "step-000000040.pt does not match its checksum", "it was not loaded")
    newest.write_bytes(newest.read_bytes()[:1000])
    assert_one_line_error_here(run_here(linefit, *spec, f"resume_from={original}"), "does not match its checksum")


def test_resuming_needs_the_same_spec_and_a_checkpoint_and_creates_nothing_otherwise(store: str) -> None:
    # The refusals are the record's; how a job prints them is tested above.

    def run_line_fit(spec: LineFitSpec) -> str:
        with start_run(spec) as run:
            train(spec, run)
        return run.run_id

    def stopped_at_step_30(spec: LineFitSpec) -> str:
        with pytest.raises(RuntimeError), start_run(spec) as run:
            train(spec.model_copy(update={"steps": 30}), run)
            raise RuntimeError("stopped")  # the run ends FAILED, short of its 40 steps
        return run.run_id

    with_checkpoints = stopped_at_step_30(LineFitSpec(steps=40, checkpoint_every=20))
    without = stopped_at_step_30(LineFitSpec(steps=40))
    finished = run_line_fit(LineFitSpec(steps=40, checkpoint_every=20))
    count = len(mlflow.MlflowClient().search_runs(["0"]))
    refusals = [
        (LineFitSpec(steps=40, checkpoint_every=20, resume_from=finished),
         f"resume_from: run {finished} FINISHED, so nothing of it is left to train; resume a run that was stopped "
         f"(KILLED or FAILED), or run it again with: mlrepro reproduce {finished}"),
        (LineFitSpec(steps=40, seed=4, resume_from=with_checkpoints),
         f"resume_from: run {with_checkpoints} ran another spec (seed 3 there, 4 here)"),
        (LineFitSpec(steps=40, resume_from=without), f"resume_from: run {without} logged no checkpoint"),
        (LineFitSpec(resume_from="abc123"), "resume_from: 'abc123' is too short to name a run: give at least 8 digits"),
    ]
    for spec, message in refusals:
        with pytest.raises(MlreproError) as caught:
            run_line_fit(spec)
        assert str(caught.value).startswith(message)
    assert len(mlflow.MlflowClient().search_runs(["0"])) == count
