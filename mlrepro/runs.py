"""Read logged runs back from MLflow as typed records: the thin I/O layer under compare, show and find."""

from __future__ import annotations

import json
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from mlrepro import keys
from mlrepro.compare import LoggedRun, LossSeries, RunComparison, compare_logged_runs
from mlrepro.errors import (
    ExperimentNotFoundError,
    NoLossesError,
    RunNotFoundError,
    SpecError,
    TrackingError,
    describe_store_failure,
)
from mlrepro.spec import BaseSpec, parse_spec
from mlrepro.verdicts import verdicts_from_tags

# Tags that describe the record itself rather than the environment it ran in.
_BOOKKEEPING_TAGS = {
    keys.TAG_JOB, keys.TAG_SPEC_HASH, keys.TAG_ENV_HASH, keys.TAG_ERROR, keys.TAG_LOSS_DIGEST, keys.TAG_REPRODUCES,
    keys.TAG_RESUMED_FROM, keys.TAG_RESUMED_AT_STEP, keys.TAG_RESUMED_BY,
}
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
                if keys.TAG_LOSS_DIGEST not in run.data.tags:
                    # The run never finished (killed, or still going): its exact record ends at its
                    # last flush, and the steps after that are only in the metric history.
                    after_exact = int(losses.steps[-1]) + 1 if len(losses) else 0
                    spliced = losses.spliced(_metric_history(client, run_id, metric), after_exact)
                    if len(spliced) > len(losses):
                        losses, source = spliced, f"artifact to step {after_exact - 1}, metric history after"
            else:
                losses = _metric_history(client, run_id, metric)
                source = "metric history"
    except (MlflowException, OSError) as err:  # OSError: DNS, a vanished artifact folder
        if is_missing_run(err):
            raise RunNotFoundError(f"no run {run_id!r} in the tracking store {client.tracking_uri}") from err
        raise TrackingError(describe_store_failure(client.tracking_uri, err)) from err

    resumed_from = run.data.tags.get(keys.TAG_RESUMED_FROM)
    if resumed_from:
        # A resumed run is the continuation of another: its losses start where that
        # run's checkpoint was, and the steps before come from that run (and its own
        # predecessors), so it compares whole against an uninterrupted run.
        first_own = int(run.data.tags.get(keys.TAG_RESUMED_AT_STEP, losses.steps[0] if len(losses) else 0))
        losses = load_run(resumed_from, client).losses.spliced(losses, first_own)
        source = f"{source}; steps before {first_own} from run {resumed_from}"
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


def _metric_history(client: MlflowClient, run_id: str, metric: str) -> LossSeries:
    history = client.get_metric_history(run_id, metric)
    return LossSeries.from_steps_and_values([point.step for point in history], [point.value for point in history])


def is_missing_run(err: BaseException) -> bool:
    """Whether MLflow's error says the run does not exist (or its id is malformed)."""
    return getattr(err, "error_code", None) in _NOT_FOUND_CODES


def compare_runs(a: str | LoggedRun, b: str | LoggedRun, client: MlflowClient | None = None) -> RunComparison:
    """Compare two runs, given as ids or as records already loaded with ``load_run``."""
    client = client or MlflowClient()
    run_a = a if isinstance(a, LoggedRun) else load_run(a, client)
    run_b = b if isinstance(b, LoggedRun) else load_run(b, client)
    return compare_logged_runs(run_a, run_b)


_RECORDS = (keys.SPEC_ARTIFACT, keys.ENVIRONMENT_ARTIFACT, keys.LOSSES_ARTIFACT)


def _download_records(client: MlflowClient, run_id: str, folder: Path) -> dict[str, Path]:
    """The records compare needs, downloaded (not the plots beside them); none for a run logged without mlrepro."""
    listed = {entry.path for entry in client.list_artifacts(run_id, keys.ARTIFACT_DIR)}
    return {path: Path(client.download_artifacts(run_id, path, str(folder))) for path in _RECORDS if path in listed}


def _environment_from_tags(tags: dict[str, str]) -> dict[str, str]:
    return {
        key[len(keys.ENV_TAG_PREFIX) :]: value
        for key, value in tags.items()
        if key.startswith(keys.ENV_TAG_PREFIX)
        and key not in _BOOKKEEPING_TAGS
        and not key.startswith(keys.TAG_VERDICT_PREFIX)
    }


class RunSummary(BaseModel):
    """One line of ``mlrepro find``: which run, when, what it ran and what it was found to equal."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    experiment_id: str
    run_name: str | None
    status: str
    start_time: datetime
    job: str | None
    spec_hash: str | None
    env_hash: str | None
    loss_digest: str | None
    verdicts: dict[str, str]  # other run id -> verdict, from `compare --log`


_HASH = re.compile(r"^[0-9a-f]{1,64}$")


def find_runs(
    *,
    spec_hash: str | None = None,
    spec: BaseSpec | None = None,
    env_hash: str | None = None,
    loss_digest: str | None = None,
    experiment: str | None = None,
    max_results: int = 1000,
    client: MlflowClient | None = None,
) -> list[RunSummary]:
    """mlrepro runs matching every criterion given, newest first; all of them when none is given.

    ``spec`` finds runs of exactly that spec (by its hash); ``experiment`` is a name
    or an id (default: every active experiment).
    """
    if spec is not None and spec_hash is not None:
        raise SpecError("find runs by a spec or by a spec hash, not both")
    client = client or MlflowClient()
    criteria = {keys.TAG_SPEC_HASH: spec.hash if spec is not None else spec_hash}
    criteria.update({keys.TAG_ENV_HASH: env_hash, keys.TAG_LOSS_DIGEST: loss_digest})
    clauses = []
    for tag, value in criteria.items():
        if value is None:
            continue
        if not _HASH.match(value):
            raise SpecError(f"{tag.removeprefix(keys.TAG_PREFIX)}: must be a hex hash as mlrepro logs it (got {value!r})")
        clauses.append(f"tags.`{tag}` = '{value}'")
    if not clauses:
        clauses.append(f"tags.`{keys.TAG_SPEC_HASH}` LIKE '%'")
    try:
        experiment_ids = _experiment_ids(client, experiment)
        runs = client.search_runs(
            experiment_ids,
            filter_string=" and ".join(clauses),
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        ) if experiment_ids else []
    except (MlflowException, OSError) as err:
        raise TrackingError(describe_store_failure(client.tracking_uri, err)) from err
    return [_summary(run) for run in runs]


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    found = client.get_experiment_by_name(experiment)
    if found is None and experiment.isdigit():
        try:
            found = client.get_experiment(experiment)
        except MlflowException:
            found = None
    if found is None:
        raise ExperimentNotFoundError(f"no experiment named or numbered {experiment!r} in {client.tracking_uri}")
    return [found.experiment_id]


def _summary(run: Run) -> RunSummary:
    tags = run.data.tags
    return RunSummary(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        run_name=run.info.run_name,
        status=run.info.status,
        start_time=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
        job=tags.get(keys.TAG_JOB),
        spec_hash=tags.get(keys.TAG_SPEC_HASH),
        env_hash=tags.get(keys.TAG_ENV_HASH),
        loss_digest=tags.get(keys.TAG_LOSS_DIGEST),
        verdicts=verdicts_from_tags(tags),
    )
