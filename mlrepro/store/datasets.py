"""The datasets a run trained on, in MLflow's own dataset tracking (``log_inputs``): written here,
and read back here, checked, since anyone who can log a run can write them."""

from __future__ import annotations

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.entities import Run as MlflowRun
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from pydantic import ValidationError

from mlrepro.capture.datasets import DatasetRecord
from mlrepro.errors import DamagedRecordError, describe_validation_error
from mlrepro.store import keys
from mlrepro.store.failures import store_errors
from mlrepro.store.search import search


def log_dataset(client: object, run_id: str, name: str, digest: str, source_type: str, source: str,
                context: str) -> None:
    """One dataset on the run, as MLflow's UI shows it (Datasets used, with its context tag).
    Logging the same dataset again changes nothing: MLflow keeps one input a dataset and context."""
    dataset = Dataset(name=name, digest=digest, source_type=source_type, source=source)
    with store_errors(client, run_id):  # type: ignore[arg-type]
        client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])  # type: ignore[attr-defined]


def read_datasets(run: MlflowRun) -> dict[str, DatasetRecord]:
    """The run's datasets by name (the training set first logged under a name wins over a later
    one of another context); a record that is not one MLflow's model allows is damaged."""
    found: dict[str, DatasetRecord] = {}
    inputs = run.inputs.dataset_inputs if run.inputs is not None else []
    for entry in inputs:
        context = next((tag.value for tag in entry.tags if tag.key == MLFLOW_DATASET_CONTEXT), "train")
        try:
            record = DatasetRecord(name=entry.dataset.name, digest=entry.dataset.digest,
                                   source_type=entry.dataset.source_type, source=entry.dataset.source or "",
                                   context=context or "train")
        except ValidationError as err:
            raise DamagedRecordError(f"run {run.info.run_id}: its dataset {str(entry.dataset.name)[:40]!r} is damaged: "
                                     f"{describe_validation_error(err)}") from err
        key = record.name if record.context == "train" else f"{record.name} ({record.context})"
        found.setdefault(key, record)
    return found


def newest_recorded_data(client: MlflowClient, spec_hash: str) -> tuple[str, dict[str, DatasetRecord]] | None:
    """The newest run of a spec (by its hash) that recorded its data, and that data: what a check of the
    same spec finds on disk now is held against it. None where no run of the spec recorded data."""
    for run in search(client, {keys.TAG_SPEC_HASH: spec_hash}, {}, None, max_results=20):
        datasets = read_datasets(run)
        if datasets:
            return run.info.run_id, datasets
    return None
