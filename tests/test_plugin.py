"""The MLflow plugin: every MLflow run gets the environment tags, and the plugin never blocks a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlrepro.plugin import EnvironmentRunContext
from tests.conftest import run_command

PLAIN_RUN = """
import json, sys
import mlflow
light = "torch" not in sys.modules and "mlrepro.tracking" not in sys.modules
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 1.0)
tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
print(json.dumps({"import_was_light": light, "tags": tags}))
"""


def test_a_plain_mlflow_run_carries_the_environment_tags(tmp_path: Path, store: str) -> None:
    result = run_command([sys.executable, "-c", PLAIN_RUN], store, tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    tags = out["tags"]
    for key in [
        "mlrepro.torch.version", "mlrepro.cuda.available", "mlrepro.cpu.model", "mlrepro.python.version",
        "mlrepro.determinism.deterministic_algorithms", "mlrepro.determinism.cudnn_benchmark",
        "mlrepro.determinism.intra_op_threads", "mlrepro.env_hash",
    ]:
        assert tags.get(key), key
    # `import mlflow` loads the plugin; it must not drag torch into every MLflow user's start-up.
    assert out["import_was_light"] is True


def test_a_failing_record_warns_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlrepro.environment

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("collector exploded")

    monkeypatch.setattr(mlrepro.environment, "capture_environment", broken)
    with pytest.warns(UserWarning, match="could not record the environment of this run: collector exploded"):
        assert EnvironmentRunContext().tags() == {}
