"""No secret reaches a tag, a param, an artifact or a message: tokens planted in the environment and
credentials in tracking URIs are removed before anything is logged or printed."""

from __future__ import annotations

import subprocess
import sys
from array import array
from pathlib import Path

import mlflow
import pytest

from mlrepro.store.spool import Spool
from tests.conftest import job_env, only_run_id

PLANTED = {
    "MY_API_TOKEN": "tok-0123456789abcdef",
    "DB_PASSWORD": "pw-correct-horse-battery",
    "CLOUD_SECRET_KEY": "sk-live-fedcba9876543210",
    "AWS_SECRET_ACCESS_KEY": "aws-wJalrXUtnFEMIK7MDENG",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-424242",
}
URI_PASSWORD = "uri-pass-31337"


def run(args: list[str], uri: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = job_env(uri, PYTHONHASHSEED="0", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5",
                  **PLANTED)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def leaks(text: str) -> list[str]:
    return [secret for secret in [*PLANTED.values(), URI_PASSWORD] if secret in text]


@pytest.mark.e2e
def test_planted_secrets_reach_no_tag_param_artifact_or_message(tmp_path: Path, store: str, spool_dir: Path) -> None:
    python = sys.executable
    outputs = [
        # A job, a bad value that is a secret, and every command that reads or marks a run.
        run([python, "-m", "projects.linefit", "steps=20", "checkpoint_every=10"], store, tmp_path),
        run([python, "-m", "projects.linefit", f"seed={PLANTED['MY_API_TOKEN']}"], store, tmp_path),
    ]
    run_id = only_run_id(store)
    outputs += [run([python, "-m", "mlrepro", *args], store, tmp_path) for args in (
        ["compare", "--log", run_id, run_id], ["show", run_id], ["mark-killed", run_id],
    )]
    # A tracking server behind a URI with a password, that cannot be reached.
    unreachable = f"http://alice:{URI_PASSWORD}@127.0.0.1:9"
    # What a run against it left in its spool, and `mlrepro sync` trying to deliver it there.
    spool = Spool.create(run_id, unreachable, "loss", 0)
    spool.append_losses(array("d", [1.0, 2.0]))
    spool.set_tag(run_id, "mlrepro.note", "pending")
    spool.close()
    outputs += [run([python, "-m", "mlrepro", "sync", "--wait", "1"], unreachable, tmp_path),
                run([python, "-m", "mlrepro", "show", run_id], unreachable, tmp_path),
                run([python, "-m", "projects.linefit", "steps=5"], unreachable, tmp_path)]
    assert outputs[0].returncode == 0 and outputs[1].returncode == 2 and outputs[-1].returncode == 2
    assert outputs[-3].returncode == 4 and "2 steps and 1 other write still pending" in outputs[-3].stdout
    for file in spool_dir.rglob("*"):
        if file.is_file():
            assert leaks(file.read_bytes().decode("latin-1")) == [], file
    assert "tok-" not in outputs[1].stderr and "***" in outputs[1].stderr
    assert "http://127.0.0.1:9" in outputs[-1].stderr
    for output in outputs:
        assert leaks(output.stdout + output.stderr) == [], output.args

    client = mlflow.MlflowClient()
    for logged in client.search_runs(["0"]):
        texts = [*logged.data.tags.values(), *logged.data.params.values()]
        assert leaks("\n".join(texts)) == [], logged.info.run_id
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")).parent.parent
    for file in artifacts.rglob("*"):
        if file.is_file():
            assert leaks(file.read_bytes().decode("latin-1")) == [], file
