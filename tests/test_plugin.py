"""The MLflow plugin: every MLflow run gets the environment tags, and the plugin never blocks a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlrepro.integrations.mlflow_plugin import EnvironmentRunContext
from tests.conftest import run_command

PLAIN_RUN = """
import json, sys
import mlflow
light = "torch" not in sys.modules and "mlrepro.training.tracking" not in sys.modules
if sys.argv[1] == "torch":
    import torch  # a training script: the plugin records what it runs on
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 1.0)
tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
print(json.dumps({"import_was_light": light, "torch_after": "torch" in sys.modules, "tags": tags}))
"""


def plain_run(store: str, cwd: Path, uses_torch: bool) -> dict:
    result = run_command([sys.executable, "-c", PLAIN_RUN, "torch" if uses_torch else "none"], store, cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.e2e
def test_a_plain_mlflow_run_of_a_torch_script_carries_the_environment_tags(tmp_path: Path, store: str) -> None:
    out = plain_run(store, tmp_path, uses_torch=True)
    tags = out["tags"]
    for fact in [
        "torch.version", "cuda.available", "cpu.model", "python.version", "code.entry", "code.source_digest",
        "determinism.deterministic_algorithms", "determinism.cudnn_benchmark", "determinism.intra_op_threads",
    ]:
        assert tags.get(f"mlrepro.environment.{fact}"), fact
    assert tags.get("mlrepro.env_hash")
    # `import mlflow` loads the plugin; it must not drag torch into every MLflow user's start-up.
    assert out["import_was_light"] is True


@pytest.mark.e2e
def test_a_script_without_torch_pays_nothing(tmp_path: Path, store: str) -> None:
    out = plain_run(store, tmp_path, uses_torch=False)
    assert out["torch_after"] is False
    assert not [key for key in out["tags"] if key.startswith("mlrepro.")]


def test_mlrepro_runs_record_their_environment_once(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlrepro.capture.environment
    import mlrepro.training.tracking
    from mlrepro import start_run
    from projects.linefit.spec import LineFitSpec

    calls = []
    real = mlrepro.capture.environment.capture_environment

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlrepro.capture.environment, "capture_environment", counted)
    monkeypatch.setattr(mlrepro.training.tracking, "capture_environment", counted)
    with start_run(LineFitSpec(steps=1)) as run:
        run.log_loss(1.0)
    assert len(calls) == 1


def test_a_failing_record_warns_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlrepro.capture.environment

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("collector exploded")

    monkeypatch.setattr(mlrepro.capture.environment, "capture_environment", broken)
    with pytest.warns(UserWarning, match="could not record the environment of this run: collector exploded"):
        assert EnvironmentRunContext().tags() == {}
