"""Everything a run holds in MLflow, written and read here and nowhere else.

A run made by mlrepro holds:

- params: the spec's fields, as text;
- tags: ``mlrepro.job``, ``mlrepro.spec_hash``, ``mlrepro.spec_class``, ``mlrepro.env_hash``,
  ``mlrepro.loss_digest`` (also the mark of a complete loss record), the resume links,
  ``mlrepro.error``, the verdicts of ``compare --log``, and every environment fact under
  ``mlrepro.environment.`` (bookkeeping and facts never share a prefix);
- artifacts under ``mlrepro/``: ``spec.json``, ``environment.json``, ``seeding.json``,
  ``code.json``, the exact loss record ``losses.npz``, ``checkpoints/`` and ``compare/`` plots;
- the metric ``loss`` (or the spec's ``metric``) at every step, written by the writer process.

What a training run writes once it has started (losses, the exact record, checkpoints,
metrics, the end) goes to its local spool first (``mlrepro.store.spool``), which replays
these same calls on a client: the functions that take a ``RunWriter`` write either way.

Every MLflow or OS error of the store becomes an mlrepro error through
``mlrepro.store.failures``. This module imports neither torch nor the training side, so the commands that
only read stay light.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from mlrepro.capture.code import CodeRecord
from mlrepro.capture.fingerprints import FingerprintRecord
from mlrepro.capture.logged import LoggedRun
from mlrepro.capture.losses import LossSeries
from mlrepro.capture.seed_record import SeedRecord
from mlrepro.capture.spec import BaseSpec, class_path
from mlrepro.errors import (
    NoLossesError,
    SpecError,
    one_line,
    redacted,
)
from mlrepro.store import keys
from mlrepro.store.artifacts import download
from mlrepro.store.datasets import read_datasets
from mlrepro.store.failures import store_errors, store_failures
from mlrepro.store.json_records import (
    damage_named,
    read_environment,
    read_model,
    read_seeding,
    read_spec,
)
from mlrepro.store.loss_record import read_loss_record
from mlrepro.store.opening import resolve_run_id
from mlrepro.store.process import identity, liveness
from mlrepro.store.resume_links import check_resume_chain, resumed_at_step

if TYPE_CHECKING:
    from mlrepro.capture.environment import EnvironmentRecord

# MLflow accepts at most 1,000 metrics, and 100 params and tags, in one log_batch call.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
# Runs logged before mlrepro 0.2 kept environment facts as mlrepro.<fact>, beside these.
_LEGACY_BOOKKEEPING = {
    keys.TAG_JOB, keys.TAG_SPEC_HASH, keys.TAG_ENV_HASH, keys.TAG_ERROR, keys.TAG_LOSS_DIGEST, keys.TAG_REPRODUCES,
    keys.TAG_RESUMED_FROM, keys.TAG_RESUMED_AT_STEP, keys.TAG_RESUMED_BY, keys.TAG_SPEC_CLASS,
    keys.TAG_OWN_LOSS_DIGEST, keys.TAG_PROCESS, keys.TAG_ENDED,
}
TAG_LIMIT = 5000


class RunWriter(Protocol):
    """Where a training run's writes go: an ``MlflowClient``, or the run's spool
    (``mlrepro.store.spool.Spool``), which keeps them on disk and replays them on a client."""

    tracking_uri: str

    def set_tag(self, run_id: str, key: str, value: str) -> Any: ...

    def log_metric(self, run_id: str, key: str, value: float, step: int | None = None) -> Any: ...

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> Any: ...

    def set_terminated(self, run_id: str, status: str | None = None) -> Any: ...

# Set by `mlflow run` on the runs it creates.
MLFLOW_ENTRY_POINT_TAG = "mlflow.project.entryPoint"


# --- writing ------------------------------------------------------------------------


def write_start(
    client: MlflowClient,
    run_id: str,
    spec: BaseSpec,
    seed_record: SeedRecord,
    environment: EnvironmentRecord,
    code: CodeRecord,
) -> CodeRecord:
    """Log what a run is before it trains: the spec, the seeding, the environment, the code.

    Returns the code record completed with what ``mlflow run`` gave the job: its entry
    point and the parameters it logged, the words a repeat must give again.
    """
    with store_errors(client, run_id):
        run = client.get_run(run_id)
        # `mlflow run` has already logged the entry point's parameters as the user typed
        # them ("1e-4"); logging the same key again with other text ("0.0001") is an
        # error in MLflow, so only the fields it did not log are added.
        launcher_params = dict(run.data.params)
        entry_point = run.data.tags.get(MLFLOW_ENTRY_POINT_TAG)
        if entry_point:
            code = code.model_copy(update={"mlproject_entry_point": entry_point,
                                           "mlproject_parameters": launcher_params})
        params = {key: value for key, value in spec.to_params().items() if key not in launcher_params}
        tags = {
            keys.TAG_PROCESS: identity(),
            keys.TAG_JOB: spec.job,
            keys.TAG_SPEC_HASH: spec.hash,
            keys.TAG_SPEC_CLASS: _importable_class_path(class_path(type(spec)), code),
            **environment_tags(environment),
        }
        param_list = [Param(key, value) for key, value in params.items()]
        tag_list = [RunTag(key, value) for key, value in tags.items()]
        for start in range(0, max(len(param_list), len(tag_list)), MAX_PARAMS_TAGS_PER_BATCH):
            end = start + MAX_PARAMS_TAGS_PER_BATCH
            client.log_batch(run_id, params=param_list[start:end], tags=tag_list[start:end], synchronous=True)
        _log_json(client, run_id, keys.SPEC_ARTIFACT, spec.model_dump(mode="json"))
        _log_json(client, run_id, keys.ENVIRONMENT_ARTIFACT, environment.model_dump(mode="json")["facts"])
        _log_json(client, run_id, keys.SEED_ARTIFACT, seed_record.model_dump(mode="json"))
        # The words a job was started with may hold a token or a URL with a password.
        _log_json(client, run_id, keys.CODE_ARTIFACT, json.loads(redacted(code.model_dump_json())))
    return code


def environment_tags(environment: EnvironmentRecord) -> dict[str, str]:
    """The record as MLflow tags: one ``mlrepro.environment.<fact>`` per fact, and its hash."""
    tags = {keys.ENV_TAG_PREFIX + fact: value for fact, value in environment.facts.items()}
    tags[keys.TAG_ENV_HASH] = environment.hash
    return tags


def write_environment_change(client: RunWriter, run_id: str, environment: EnvironmentRecord,
                             changed: Mapping[str, tuple[str, str]]) -> None:
    """The environment as training found it, where it changed after the run opened (a framework set a
    determinism switch): the record, the changed facts' tags and the hash again, and a tag naming each
    change as ``fact: opened -> trained``."""
    tags = environment_tags(environment)
    with store_errors(client, run_id):
        for key in [keys.ENV_TAG_PREFIX + fact for fact in changed] + [keys.TAG_ENV_HASH]:
            client.set_tag(run_id, key, tags.get(key, ""))
        note = "; ".join(f"{fact}: {before} -> {after}" for fact, (before, after) in sorted(changed.items()))
        client.set_tag(run_id, keys.TAG_ENVIRONMENT_CHANGED, redacted(note)[:TAG_LIMIT])
        _log_json(client, run_id, keys.ENVIRONMENT_ARTIFACT, environment.model_dump(mode="json")["facts"])


def _importable_class_path(path: str, code: CodeRecord) -> str:
    """A class defined in ``__main__`` named by the module another process imports it as:
    ``train:NoisySpec`` for ``python train.py``, run from its project folder."""
    module, _, name = path.partition(":")
    if module != "__main__":
        return path
    if code.entry_kind == "script" and code.entry.endswith(".py"):
        return f"{code.entry[:-3].replace('/', '.')}:{name}"
    if code.entry_kind == "module":
        return f"{code.entry}:{name}"
    return path


def _log_json(client: RunWriter, run_id: str, artifact: str, content: Any) -> None:
    folder, name = artifact.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as temporary:
        path = Path(temporary) / name
        path.write_text(json.dumps(content, indent=2, sort_keys=True))
        client.log_artifact(run_id, str(path), artifact_path=folder)


def write_loss_metrics(client: MlflowClient, run_id: str, metric: str, values: array, first_step: int,
                       timestamp: int | None = None) -> None:
    """Log ``values`` as metric ``metric`` at steps ``first_step``, ``first_step + 1``, ..., in
    batches MLflow accepts, stamped ``timestamp`` (ms; now if None). The spool's delivery calls
    this with the time the steps were taken; store errors are its to handle."""
    if timestamp is None:
        timestamp = int(time.time() * 1000)
    for start in range(0, len(values), MAX_METRICS_PER_BATCH):
        chunk = values[start : start + MAX_METRICS_PER_BATCH]
        metrics = [Metric(metric, value, timestamp, first_step + start + i) for i, value in enumerate(chunk)]
        client.log_batch(run_id, metrics=metrics, synchronous=True)


def write_metric(client: RunWriter, run_id: str, key: str, value: float, step: int) -> None:
    """Any other metric of a run (test accuracy per epoch, say), written at once."""
    with store_errors(client, run_id):
        client.log_metric(run_id, key, value, step=step)


def write_losses(client: RunWriter, run_id: str, losses: LossSeries, complete: bool,
                 stitched: LossSeries | None = None, per_rank: np.ndarray | None = None,
                 fingerprints: FingerprintRecord | None = None) -> None:
    """The exact loss record, bit for bit (the metric store loses inf and NaN payloads), with the
    run's per-tensor fingerprints where it took them (4 bytes a tensor a fingerprinted step).

    ``complete`` adds the digest tag, which marks the record whole: without it (a killed
    run) the record ends at its last flush and the metric history holds the steps after.
    A resumed run's digest is that of ``stitched``, the losses compare and show use, so
    ``find --digest`` finds it beside the uninterrupted run; its own part has a tag of its own.
    Each call rewrites the whole record, 8 bytes a step."""
    with store_errors(client, run_id), tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(keys.LOSSES_ARTIFACT).name
        # Under torchrun the values are the mean over ranks, and rank_values holds each rank's losses.
        extra: dict[str, np.ndarray] = {"rank_values": per_rank} if per_rank is not None else {}
        if fingerprints is not None:
            extra.update(fingerprint_steps=fingerprints.steps, fingerprints=fingerprints.values,
                         fingerprint_names=np.array(fingerprints.names, dtype=str),
                         fingerprint_kinds=np.array(fingerprints.kinds, dtype=str),
                         module_order=np.array(fingerprints.module_order, dtype=str))
        np.savez(path, steps=losses.steps, values=losses.values, **extra)
        client.log_artifact(run_id, str(path), artifact_path=keys.ARTIFACT_DIR)
        if complete:
            client.set_tag(run_id, keys.TAG_LOSS_DIGEST, (stitched or losses).digest)
            if stitched is not None:
                client.set_tag(run_id, keys.TAG_OWN_LOSS_DIGEST, losses.digest)


def write_run_name(client: RunWriter, run_id: str, name: str) -> None:
    """The name the UI shows for a run (MLflow keeps it as the tag ``mlflow.runName``)."""
    with store_errors(client, run_id):
        client.set_tag(run_id, MLFLOW_RUN_NAME, name)


def write_error(client: RunWriter, run_id: str, message: str) -> None:
    """Why a run stopped, on the run. Best effort: a store that fails must not hide the error."""
    with contextlib.suppress(*store_failures()):
        client.set_tag(run_id, keys.TAG_ERROR, one_line(redacted(message))[:TAG_LIMIT])


def write_launcher_error(message: str) -> None:
    """Say on the run ``mlflow run`` opened why the job stopped before training.

    The launcher creates the run before the job can validate its spec; it marks
    it FAILED when the job exits, and this tag tells why."""
    run_id = MLFLOW_RUN_ID.get()
    if run_id:
        write_error(MlflowClient(), run_id, message)


def write_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    with store_errors(client, run_id):
        for key, value in tags.items():
            client.set_tag(run_id, key, redacted(value)[:TAG_LIMIT])


def write_artifact(client: MlflowClient, run_id: str, path: Path, folder: str) -> None:
    with store_errors(client, run_id):
        client.log_artifact(run_id, str(path), artifact_path=folder)


def write_verdict(client: MlflowClient, run_id: str, other_run_id: str, text: str, plot: Path) -> None:
    """The verdict of ``compare --log`` against another run: a tag and the plot."""
    with store_errors(client, run_id):
        client.set_tag(run_id, keys.TAG_VERDICT_PREFIX + other_run_id, text)
    write_artifact(client, run_id, plot, keys.COMPARE_ARTIFACT_DIR)


def create_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str:
    with store_errors(client):
        return client.create_run(experiment_id, tags=dict(tags)).info.run_id


def end_run(client: RunWriter, run_id: str, status: str) -> None:
    with store_errors(client, run_id):
        client.set_terminated(run_id, status=status)


# --- reading ------------------------------------------------------------------------


def verdicts_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Other run id -> verdict, for every comparison recorded on a run."""
    prefix = keys.TAG_VERDICT_PREFIX
    return {key[len(prefix):]: value for key, value in tags.items() if key.startswith(prefix)}


def environment_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The environment facts among a run's tags (a plain MLflow run tagged by the plugin)."""
    facts = {key[len(keys.ENV_TAG_PREFIX):]: value for key, value in tags.items() if key.startswith(keys.ENV_TAG_PREFIX)}
    if facts:
        return facts
    return {  # logged before facts had a prefix of their own
        key[len(keys.TAG_PREFIX):]: value
        for key, value in tags.items()
        if key.startswith(keys.TAG_PREFIX) and key not in _LEGACY_BOOKKEEPING and not key.startswith(keys.TAG_VERDICT_PREFIX)
    }


_RECORDS = (keys.SPEC_ARTIFACT, keys.SEED_ARTIFACT, keys.ENVIRONMENT_ARTIFACT, keys.LOSSES_ARTIFACT, keys.CODE_ARTIFACT)


def read_run(client: MlflowClient, run_id: str, _chain_checked: bool = False) -> LoggedRun:
    """A run's spec, environment, code and losses; losses from the exact record where there is one,
    stitched to the runs a resumed run continues."""
    run_id = resolve_run_id(client, run_id)
    with store_errors(client, run_id), tempfile.TemporaryDirectory() as folder:
        run = client.get_run(run_id)
        if not _chain_checked:
            check_resume_chain(client, run_id, run.data.tags)
        files = download_records(client, run_id, Path(folder))
        tags = run.data.tags
        with damage_named(run_id):
            spec = read_spec(files, tags) if keys.SPEC_ARTIFACT in files else None
            seeding = read_seeding(files, spec) if keys.SEED_ARTIFACT in files else None
            environment = read_environment(files) if keys.ENVIRONMENT_ARTIFACT in files else environment_from_tags(tags)
            metric = spec.metric if spec is not None else keys.DEFAULT_LOSS_METRIC
            losses, fingerprints, source = _read_losses(client, run_id, files, tags, metric)
            code = read_model(files, keys.CODE_ARTIFACT, CodeRecord) if keys.CODE_ARTIFACT in files else None
        datasets = read_datasets(run)

    resumed_from = tags.get(keys.TAG_RESUMED_FROM)
    if resumed_from:
        # A resumed run is the continuation of another: its losses start where that
        # run's checkpoint was, and the steps before come from that run (and its own
        # predecessors), so it compares whole against an uninterrupted run.
        first_own = resumed_at_step(run_id, tags, losses)
        before = read_run(client, resumed_from, _chain_checked=True)
        losses = before.losses.spliced(losses, first_own)
        if fingerprints is not None and before.fingerprints is not None:
            fingerprints = before.fingerprints.spliced(fingerprints, first_own)
        source = f"{source}; steps before {first_own} from run {resumed_from}"
    if len(losses) == 0:
        raise NoLossesError(f"run {run_id} logged no {metric!r} metric to compare")
    return LoggedRun(
        run_id=run_id,
        status=effective_status(run.info.status, tags),
        spec=spec,
        spec_fields=spec.to_params() if spec is not None else dict(run.data.params),
        environment=environment,
        losses=losses,
        metric=metric,
        loss_source=source,
        tags=dict(tags),
        code=code,
        fingerprints=fingerprints,
        seeding=seeding,
        datasets=datasets,
        experiment_id=run.info.experiment_id,
        deleted=run.info.lifecycle_stage == "deleted",
        process=liveness(tags.get(keys.TAG_PROCESS)) if run.info.status == "RUNNING" else "unknown",
    )


def effective_status(status: str, tags: Mapping[str, str]) -> str:
    """The run's status, KILLED where the job recorded a signal and a launcher wrote FAILED over it."""
    return "KILLED" if status == "FAILED" and tags.get(keys.TAG_ENDED, "").startswith("KILLED") else status


def write_ended_by_signal(client: RunWriter, run_id: str, signal_name: str) -> None:
    """Say on the run that a signal ended it, before it is ended KILLED."""
    with store_errors(client, run_id):
        client.set_tag(run_id, keys.TAG_ENDED, f"KILLED by {signal_name}")


def write_ended_on_orders(client: RunWriter, run_id: str, steps: int) -> None:
    """Say on the run that its orders stopped it short of its end: it is FINISHED, and may be resumed."""
    with store_errors(client, run_id):
        client.set_tag(run_id, keys.TAG_ENDED, f"{keys.ENDED_ON_ORDERS} after {steps} steps")


def download_records(client: MlflowClient, run_id: str, folder: Path) -> dict[str, Path]:
    """The records compare needs, downloaded (not the plots beside them); none for a run logged without mlrepro."""
    listed = {entry.path for entry in client.list_artifacts(run_id, keys.ARTIFACT_DIR)}
    return {path: download(client, run_id, path, folder) for path in _RECORDS if path in listed}


def _read_losses(client: MlflowClient, run_id: str, files: Mapping[str, Path], tags: Mapping[str, str],
                 metric: str) -> tuple[LossSeries, FingerprintRecord | None, str]:
    """The losses (from the exact record where there is one), the fingerprints, and where the losses came from."""
    if keys.LOSSES_ARTIFACT not in files:
        return _metric_history(client, run_id, metric), None, "metric history"
    losses, fingerprints = read_loss_record(files[keys.LOSSES_ARTIFACT])
    if keys.TAG_LOSS_DIGEST not in tags:
        # The run never finished (killed, or still going): its exact record ends at its
        # last flush, and the steps after that are only in the metric history.
        after_exact = int(losses.steps[-1]) + 1 if len(losses) else 0
        spliced = losses.spliced(_metric_history(client, run_id, metric), after_exact)
        if len(spliced) > len(losses):
            return spliced, fingerprints, f"artifact to step {after_exact - 1}, metric history after"
    return losses, fingerprints, "artifact"


def _metric_history(client: MlflowClient, run_id: str, metric: str) -> LossSeries:
    history = client.get_metric_history(run_id, metric)
    return LossSeries.from_steps_and_values([point.step for point in history], [point.value for point in history],
                                            stored=True)


def read_losses(client: MlflowClient, run_id: str) -> LossSeries:
    """A run's losses as compare sees them, stitched to the runs it continues."""
    return read_run(client, run_id).losses


def mark_killed(client: MlflowClient, run_id: str) -> LoggedRun:
    """End a RUNNING run whose process is gone as KILLED: MLflow's status for it, which a run killed
    with SIGKILL never got to set. Refuses a run that is not RUNNING or whose process may live."""
    run = read_run(client, run_id)
    if run.status != "RUNNING":
        raise SpecError(f"run {run.run_id} is {run.status}, not RUNNING: nothing to mark")
    if run.process != "gone":
        where = "is still alive" if run.process == "alive" else "cannot be checked from this host"
        raise SpecError(f"run {run.run_id} is RUNNING and its process {where}; it was not marked")
    end_run(client, run.run_id, "KILLED")
    return run


