"""Read logged runs back from MLflow as typed records: the thin I/O layer under compare and lookup."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from mlrepro import keys
from mlrepro.compare import LoggedRun, LossSeries, RunComparison, compare_logged_runs
from mlrepro.errors import NoLossesError, RunNotFoundError, TrackingError, describe_store_failure
from mlrepro.spec import parse_spec

# Tags that describe the record itself rather than the environment it ran in.
_BOOKKEEPING_TAGS = {keys.TAG_JOB, keys.TAG_SPEC_HASH, keys.TAG_ENV_HASH, keys.TAG_ERROR}
_NOT_FOUND_CODES = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


def load_run(run_id: str, client: MlflowClient | None = None) -> LoggedRun:
    """A run's spec, environment and losses; losses come from the exact artifact when it exists."""
    client = client or MlflowClient()
    try:
        run = client.get_run(run_id)
        with tempfile.TemporaryDirectory() as folder:
            files = _download_records(client, run_id, Path(folder))
            spec = parse_spec(json.loads(files[keys.SPEC_ARTIFACT].read_text())) if keys.SPEC_ARTIFACT in files else None
            environment = (
                json.loads(files[keys.ENVIRONMENT_ARTIFACT].read_text())
                if keys.ENVIRONMENT_ARTIFACT in files
                else _environment_from_tags(run.data.tags)
            )
            metric = spec.metric if spec is not None else keys.DEFAULT_LOSS_METRIC
            if keys.LOSSES_ARTIFACT in files:
                with np.load(files[keys.LOSSES_ARTIFACT]) as exact:
                    losses = LossSeries.from_steps_and_values(exact["steps"], exact["values"])
                source = "artifact"
            else:
                history = client.get_metric_history(run_id, metric)
                losses = LossSeries.from_steps_and_values(
                    [point.step for point in history], [point.value for point in history]
                )
                source = "metric history"
    except (MlflowException, OSError) as err:  # OSError: DNS, a vanished artifact folder
        if getattr(err, "error_code", None) in _NOT_FOUND_CODES:
            raise RunNotFoundError(f"no run {run_id!r} in the tracking store {client.tracking_uri}") from err
        raise TrackingError(describe_store_failure(client.tracking_uri, err)) from err

    if len(losses) == 0:
        raise NoLossesError(f"run {run_id} logged no {metric!r} metric to compare")
    return LoggedRun(
        run_id=run_id,
        status=run.info.status,
        spec=spec,
        spec_fields=spec.to_params() if spec is not None else dict(run.data.params),
        environment=environment,
        losses=losses,
        metric=metric,
        loss_source=source,
        tags=dict(run.data.tags),
    )


def compare_runs(a: str | LoggedRun, b: str | LoggedRun, client: MlflowClient | None = None) -> RunComparison:
    """Compare two runs, given as ids or as records already loaded with ``load_run``."""
    client = client or MlflowClient()
    run_a = a if isinstance(a, LoggedRun) else load_run(a, client)
    run_b = b if isinstance(b, LoggedRun) else load_run(b, client)
    return compare_logged_runs(run_a, run_b)


def _download_records(client: MlflowClient, run_id: str, folder: Path) -> dict[str, Path]:
    """mlrepro's artifacts of the run, downloaded; an empty mapping for a run logged without mlrepro."""
    listed = {entry.path for entry in client.list_artifacts(run_id, keys.ARTIFACT_DIR)}
    if not listed:
        return {}
    local = Path(client.download_artifacts(run_id, keys.ARTIFACT_DIR, str(folder)))
    return {f"{keys.ARTIFACT_DIR}/{path.name}": path for path in local.iterdir() if path.is_file()}


def _environment_from_tags(tags: dict[str, str]) -> dict[str, str]:
    return {
        key[len(keys.ENV_TAG_PREFIX) :]: value
        for key, value in tags.items()
        if key.startswith(keys.ENV_TAG_PREFIX) and key not in _BOOKKEEPING_TAGS
    }
