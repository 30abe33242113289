"""The run ``mlrepro check`` records in the user's store: its verdict beside the job's runs."""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from mlrepro.capture.logged import LoggedRun
from mlrepro.store import keys
from mlrepro.store.failures import store_errors
from mlrepro.store.record import MAX_PARAMS_TAGS_PER_BATCH, TAG_LIMIT


def write_check(client: MlflowClient, checked: LoggedRun, summary: str, passed: bool, table: Path) -> str:
    """Record what ``mlrepro check`` found as a run of its own in the user's experiment
    (``MLFLOW_EXPERIMENT_NAME`` or ``MLFLOW_EXPERIMENT_ID``, else the default one): the spec and
    environment of the checked leg, the verdict as a tag the UI shows, the table as JSON."""
    job = checked.spec.job if checked.spec is not None else "job"
    tags = {MLFLOW_RUN_NAME: f"determinism check: {job}", keys.TAG_DETERMINISM_CHECKED: summary[:TAG_LIMIT],
            keys.TAG_JOB: job, **{key: value for key, value in checked.tags.items()
                                  if key.startswith(keys.ENV_TAG_PREFIX) or key == keys.TAG_ENV_HASH}}
    if checked.spec is not None:
        tags[keys.TAG_SPEC_HASH] = checked.spec.hash
    with store_errors(client):
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"
        if name:
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    with store_errors(client, run_id):
        params = [Param(key, value) for key, value in checked.spec_fields.items()]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=params[start:start + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)
        client.log_artifact(run_id, str(table), artifact_path=keys.CHECK_ARTIFACT_DIR)
        client.set_terminated(run_id, "FINISHED" if passed else "FAILED")
    return run_id
