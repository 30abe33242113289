"""`mlrepro reproduce RUN`: the logged spec run again as a new run, compared and recorded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro.cli.main import main
from mlrepro.replay.reproduce import environment_drift
from tests.conftest import (
    REPO,
    LineFitRuns,
    assert_one_line_error_here,
    only_run_id,
    run_command,
    run_here,
)


@pytest.mark.e2e
@pytest.mark.both_stores
def test_a_built_in_job_reproduces_and_both_runs_say_so(tmp_path: Path, store: str) -> None:
    job = run_command(
        [sys.executable, "-m", "projects.cifar10", "dataset=fake", "train_limit=80", "test_limit=20",
         "epochs=1"], store, tmp_path, PYTHONHASHSEED="0",
    )
    assert job.returncode == 0, job.stderr[-2000:]
    original = only_run_id(store)
    # Written since into the folder the job started in (the record's working folder, where the repeat
    # starts): `python -m` would import these before the project's own code.
    marker = tmp_path / "planted-code-ran"
    for planted in ("projects/__init__.py", "projects/cifar10/__init__.py", "projects/cifar10/__main__.py",
                    "torchvision.py"):
        (tmp_path / planted).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / planted).write_text(f"open({str(marker)!r}, 'a').write({planted!r})\n")
    result = run_here(main, "reproduce", original)  # the run knows its project folder; the repeat is a process
    assert result.exit_code == 0, result.stdout + result.stderr[-2000:]
    assert not marker.exists()
    repeat = only_run_id(store)
    assert f"repeated run {original} as run {repeat}" in result.stdout and "identical: runs" in result.stdout

    client = mlflow.MlflowClient()
    new = client.get_run(repeat)
    assert new.info.status == "FINISHED" and new.data.tags["mlrepro.reproduces"] == original
    assert new.data.params["train_limit"] == "80" and new.data.params["epochs"] == "1"
    assert client.get_run(original).data.tags[f"mlrepro.verdict.{repeat}"] == "identical bit for bit (20 steps)"


@pytest.mark.e2e
def test_changed_code_runs_only_in_a_folder_the_user_names_and_with_a_warning(tmp_path: Path, store: str) -> None:
    project = Path(shutil.copytree(REPO / "examples" / "own_job", tmp_path / "noisy"))

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    assert run_command([sys.executable, "train.py", "epochs=3"], store, project).returncode == 0
    original = only_run_id(store)
    train = project / "train.py"
    train.write_text(train.read_text() + "# a comment: the sources differ, the numbers do not\n")
    # The record's own folder no longer holds the code that ran: nothing runs unless the user names it.
    assert_one_line_error_here(run_here(main, "reproduce", original), f"the code in {project} is not the code it ran",
                               "train.py differ", "nothing was run")
    result = run_here(main, "reproduce", original, "--project", str(project))
    assert result.exit_code == 0, result.stdout + result.stderr[-2000:]
    assert "mlrepro: warning: this is not the code, data or environment the run was logged with" in result.stderr
    warned = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("  env ")]
    assert warned[:2] == ["code.source_digest", "git.diff_digest"] and "git.dirty" in warned


def test_runs_that_cannot_be_repeated_exit_2_with_one_line(tmp_path: Path, linefit_store: LineFitRuns) -> None:
    with mlflow.start_run() as plain:
        mlflow.log_metric("loss", 1.0, step=0)
    assert_one_line_error_here(run_here(main, "reproduce", plain.info.run_id, "--project", str(REPO)),
                               "was not logged by an mlrepro job")
    assert_one_line_error_here(run_here(main, "reproduce", "nosuchrun"), "no run 'nosuchrun'")
    assert_one_line_error_here(
        run_here(main, "reproduce", linefit_store.same_a, "--project", str(tmp_path / "gone")),
        f"the project folder {tmp_path / 'gone'} is not here: pass --project DIR",
    )


def test_drift_names_code_versions_and_hardware_but_not_the_switches() -> None:
    logged = {"git.commit": "a", "torch.version": "2.13.0", "determinism.cudnn_benchmark": "false", "gpu.name": "A100"}
    now = {"git.commit": "b", "torch.version": "2.14.1", "determinism.cudnn_benchmark": "true", "gpu.name": "A100"}
    assert [d.key for d in environment_drift(logged, now)] == ["torch.version", "git.commit"]
