"""Checkpoints in the store: each file under ``mlrepro/checkpoints/`` with its SHA-256 beside it.
The store moves files; ``mlrepro.training.checkpoint`` writes and reads what is in them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlrepro.capture.spec import BaseSpec, role
from mlrepro.errors import (
    CheckpointError,
    SpecError,
)
from mlrepro.store import keys
from mlrepro.store.artifacts import download
from mlrepro.store.failures import store_errors
from mlrepro.store.json_records import damage_named, read_spec
from mlrepro.store.opening import resolve_run_id
from mlrepro.store.record import RunWriter, download_records


def write_checkpoint(client: RunWriter, run_id: str, path: Path) -> None:
    """A checkpoint file saved as ``step-NNNNNNNNN.pt`` (by ``mlrepro.training.checkpoint``) and
    its SHA-256 beside it, logged under ``mlrepro/checkpoints/``."""
    with store_errors(client, run_id):
        for file in (path, path.with_name(path.name + keys.CHECKSUM_SUFFIX)):
            client.log_artifact(run_id, str(file), artifact_path=keys.CHECKPOINT_ARTIFACT_DIR)


def delete_checkpoint(client: MlflowClient, run_id: str, step: int) -> None:
    """The run's checkpoint at ``step`` and its checksum taken out of its artifacts, as
    ``keep_checkpoints`` asks. A store whose artifacts cannot be deleted (MLflow's default for a
    repository without deletion does nothing) keeps them; one already gone is no error."""
    # The artifact repository, the one way MLflow deletes an artifact: only where a spool is delivered
    from mlflow.store.artifact.artifact_repository_registry import (
        get_artifact_repository,
    )

    name = f"{keys.CHECKPOINT_ARTIFACT_DIR}/{keys.checkpoint_file(step)}"
    with store_errors(client, run_id):
        repository = get_artifact_repository(client.get_run(run_id).info.artifact_uri,
                                             tracking_uri=client.tracking_uri)
        for path in (name + keys.CHECKSUM_SUFFIX, name):  # the checksum first: a half-deleted pair is never listed
            try:
                repository.delete_artifacts(path)
            except NotImplementedError:
                return


def write_model(client: RunWriter, run_id: str, path: Path, name: str) -> None:
    """A model's weights file and its SHA-256 beside it, logged under ``name/``."""
    with store_errors(client, run_id):
        for file in (path, path.with_name(path.name + keys.CHECKSUM_SUFFIX)):
            client.log_artifact(run_id, str(file), artifact_path=name)


def download_newest_checkpoint(client: MlflowClient, spec: BaseSpec, folder: Path) -> tuple[str, Path]:
    """The run ``spec.resume_from`` names (its full id) and its newest checkpoint file with its
    checksum, downloaded into ``folder``; that run must have run the same spec. Everything is
    checked before the resumed run is created; the caller loads the file."""

    context = "resume_from: "
    run_id = resolve_run_id(client, spec.resume_from, context)
    with store_errors(client, run_id, context), tempfile.TemporaryDirectory() as folder:
        run = client.get_run(run_id)
        if run.info.lifecycle_stage == "deleted":
            raise SpecError(f"resume_from: run {run_id} is deleted; restore it first (mlflow runs restore --run-id {run_id})")
        if run.info.status == "FINISHED" and not run.data.tags.get(keys.TAG_ENDED, "").startswith(keys.ENDED_ON_ORDERS):
            # Its newest checkpoint is at or near its end: a resume would train nothing, or train
            # its last steps again, as a new run that looks like a continuation.
            raise SpecError(f"resume_from: run {run_id} FINISHED, so nothing of it is left to train; resume a run "
                            f"that was stopped (KILLED or FAILED), or run it again with: mlrepro reproduce {run_id}")
        files = download_records(client, run_id, Path(folder))
        with damage_named(run_id):
            logged = read_spec(files, run.data.tags) if keys.SPEC_ARTIFACT in files else None
    if logged is None:
        raise SpecError(f"resume_from: run {run_id} was not logged by an mlrepro job")
    if logged.job != spec.job or logged.hash != spec.hash:
        changed = ", ".join(
            f"{key} {there.get(key)} there, {here.get(key)} here"
            for there, here in [(logged.to_params(), spec.to_params())]
            for key in sorted(set(there) | set(here)) if there.get(key) != here.get(key) and not role(type(spec), key).carried_out
        )
        raise SpecError(f"resume_from: run {run_id} ran another spec ({changed}); resume with the spec it ran")
    with store_errors(client, run_id, context):
        listed = {entry.path for entry in client.list_artifacts(run_id, keys.CHECKPOINT_ARTIFACT_DIR)}
        names = sorted(name for name in listed if name.endswith(".pt"))
        if not names:
            raise CheckpointError(f"resume_from: run {run_id} logged no checkpoint (its checkpoint_every was 0?)")
        if names[-1] + keys.CHECKSUM_SUFFIX not in listed:
            raise CheckpointError(f"resume_from: checkpoint {names[-1]} of run {run_id} has no checksum beside it; "
                                  "it was not loaded")
        path = download(client, run_id, names[-1], folder)
        download(client, run_id, names[-1] + keys.CHECKSUM_SUFFIX, folder)
        return run_id, path


def checkpoint_steps(client: MlflowClient, run_id: str) -> list[int]:
    """The steps at which a run logged a checkpoint with its checksum beside it, in order."""
    with store_errors(client, run_id):
        listed = {entry.path for entry in client.list_artifacts(run_id, keys.CHECKPOINT_ARTIFACT_DIR)}
    return sorted(int(Path(name).stem.removeprefix("step-")) for name in listed
                  if name.endswith(".pt") and name + keys.CHECKSUM_SUFFIX in listed)


def download_checkpoint(client: MlflowClient, run_id: str, step: int, folder: Path) -> Path:
    """A run's checkpoint at ``step``, with its checksum, downloaded into ``folder``: a file
    ``load_checkpoint`` reads and a job started under orders resumes from."""
    name = f"{keys.CHECKPOINT_ARTIFACT_DIR}/{keys.checkpoint_file(step)}"
    target = folder / run_id
    target.mkdir(parents=True, exist_ok=True)
    with store_errors(client, run_id):
        path = download(client, run_id, name, target)
        download(client, run_id, name + keys.CHECKSUM_SUFFIX, target)
    return path
