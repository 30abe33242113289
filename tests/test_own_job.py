"""A user's own project, as a new user writes it: its own MLproject, spec class and training loop
(examples/own_job, copied to a temporary folder; nothing from projects/). It gets every guarantee,
and every read path works where its spec class cannot be imported."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest

from mlrepro.cli.job import job_command
from mlrepro.cli.main import main
from tests.conftest import (
    REPO,
    assert_one_line_error_here,
    mlrepro_cli,
    only_run_id,
    run_command,
    run_here,
    stopped_here,
)

# Read where `train` (the module that defines NoisySpec) cannot be imported.
READ_WITHOUT_THE_CLASS = """
import json, sys
import mlrepro
try:
    import train
    raise SystemExit("train.py was importable: this process proves nothing")
except ImportError:
    pass
run = mlrepro.load_run(sys.argv[1])
print(json.dumps({"type": type(run.spec).__name__, "job": run.spec.job, "hash": run.spec.hash,
                  "width": run.spec.fields["width"], "spec_class": run.spec.spec_class,
                  "spec_hash_tag": run.tags["mlrepro.spec_hash"], "torch": "torch" in sys.modules}))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO / "examples" / "own_job", tmp_path / "noisy"))


def users_job(project: Path) -> tuple[type, Callable]:
    """The spec class and training function of the project's train.py, loaded as a module is."""
    module = runpy.run_path(str(project / "train.py"))
    return module["NoisySpec"], module["train"]


def launched(store: str, cwd: Path, project: Path, *params: str) -> str:
    args = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local"]
    for param in params:
        args += ["-P", param]
    result = run_command(args, store, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_id(store)


@pytest.mark.e2e
def test_mlflow_run_compare_show_find_and_reproduce_a_users_own_job(tmp_path: Path, store: str, project: Path) -> None:
    a = launched(store, tmp_path, project, "epochs=40")
    wider = launched(store, tmp_path, project, "epochs=40", "width=32")

    different = run_here(main, "compare", "--json", a[:8], wider[:8])
    assert different.exit_code == 1, different.stderr
    verdict = json.loads(different.stdout)
    assert verdict["first_divergent_step"] == 0
    assert [(d["source"], d["key"], d["value_a"], d["value_b"]) for d in verdict["differences"]] == [
        ("spec", "width", "16", "32")]
    assert verdict["diagnosis"].startswith("most likely cause: width (16 | 32)")

    shown = run_here(main, "show", a)
    assert shown.exit_code == 0, shown.stderr
    assert f"code: script train.py in {project}" in shown.stdout and "MLproject entry point main" in shown.stdout
    assert "spec (noisy, hash " in shown.stdout and "  width: 16" in shown.stdout

    found = json.loads(run_here(main, "find", "--json", "--job", "noisy", "width=32").stdout)
    assert [(run["run_id"], run["job"], run["entry"]) for run in found] == [(wider, "noisy", "train.py")]

    record = run_command([sys.executable, "-c", READ_WITHOUT_THE_CLASS, a], store, tmp_path)
    assert record.returncode == 0, record.stderr[-2000:]
    read = json.loads(record.stdout)
    assert (read["type"], read["job"], read["width"], read["spec_class"]) == ("LoggedSpec", "noisy", 16, "train:NoisySpec")
    assert read["hash"] == read["spec_hash_tag"] and read["torch"] is False

    # From another folder, with no --project: the run knows its project and its MLproject entry point.
    repeated = mlrepro_cli(store, tmp_path, "reproduce", a[:8])
    assert repeated.returncode == 0, repeated.stdout + repeated.stderr[-3000:]
    repeat = only_run_id(store)  # the second run of the same spec: identical, bit for bit
    assert f"repeated run {a} as run {repeat}" in repeated.stdout
    assert f"identical: runs {a} and {repeat} logged the same 160 losses, bit for bit" in repeated.stdout
    tags = mlflow.MlflowClient().get_run(repeat).data.tags
    assert tags["mlrepro.reproduces"] == a and tags["mlflow.project.entryPoint"] == "main"


def test_a_stopped_run_of_a_users_job_resumes_bit_for_bit_and_its_digest_is_the_whole_runs(
    tmp_path: Path, store: str, project: Path
) -> None:
    """In this process: a SIGKILL and its resume are proven end to end in test_resume (CIFAR-10, two
    loader workers) and test_distributed (two ranks); this is the user's own loop and spec."""
    job = job_command(*users_job(project))
    spec = ["epochs=500", "checkpoint_every=202"]  # 4 steps an epoch: checkpoints mid-epoch
    stopped_id = stopped_here(job, *spec, after=700, folder=tmp_path)  # ends after step 699, as a kill would

    resumed = run_here(job, *spec, f"resume_from={stopped_id[:8]}")
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    resumed_id = only_run_id(store)
    assert f"mlrepro: run {resumed_id} in {store}" in resumed.stderr
    assert f"mlrepro: continues run {stopped_id} from step 606" in resumed.stderr
    assert run_here(job, *spec).exit_code == 0
    uninterrupted = only_run_id(store)

    verdict = run_here(main, "compare", resumed_id, uninterrupted)
    assert verdict.exit_code == 0, verdict.stdout + verdict.stderr
    assert "logged the same 2000 losses, bit for bit" in verdict.stdout
    # The digest is of the stitched losses, so `find --digest` finds the resumed run beside the whole one.
    client = mlflow.MlflowClient()
    resumed_tags, whole_tags = client.get_run(resumed_id).data.tags, client.get_run(uninterrupted).data.tags
    assert resumed_tags["mlrepro.loss_digest"] == whole_tags["mlrepro.loss_digest"]
    assert resumed_tags["mlrepro.own_loss_digest"] != resumed_tags["mlrepro.loss_digest"]
    found = json.loads(run_here(main, "find", "--json", "--digest", whole_tags["mlrepro.loss_digest"]).stdout)
    assert {run["run_id"] for run in found} == {resumed_id, uninterrupted}


def test_bad_input_to_a_users_job_is_one_line(store: str, project: Path) -> None:
    result = run_here(job_command(*users_job(project)), "width=wide", "--colour", "red")
    assert_one_line_error_here(result, "invalid noisy spec: width: must be a whole number (got 'wide')",
                               "colour: unknown field (allowed: ")
    assert mlflow.MlflowClient().search_runs(["0"]) == []
