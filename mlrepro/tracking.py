"""Open an MLflow run for a spec: seed it, record it, and take the loss of every step.

``start_run`` works the same whether the run is new or was created by ``mlflow
run`` (the launcher passes ``MLFLOW_RUN_ID`` and the run is resumed), and against
any tracking URI MLflow supports.
"""

from __future__ import annotations

import tempfile
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlrepro import keys
from mlrepro.compare import LossSeries
from mlrepro.device import resolve_device
from mlrepro.environment import EnvironmentRecord, capture_environment
from mlrepro.errors import MlreproError, TrackingError, describe_store_failure
from mlrepro.seeding import SeedRecord, seed_everything, seed_generators
from mlrepro.spec import BaseSpec

# MLflow accepts at most 1,000 metrics in one log_batch call.
MAX_METRICS_PER_BATCH = 1000


class TrackedRun:
    """The training loop's handle on its MLflow run: ``log_loss`` once per step."""

    def __init__(
        self,
        run_id: str,
        spec: BaseSpec,
        device: torch.device,
        seed_record: SeedRecord,
        environment: EnvironmentRecord,
        client: MlflowClient,
    ) -> None:
        self.run_id = run_id
        self.spec = spec
        self.device = device
        self.seed_record = seed_record
        self.environment = environment
        self._client = client
        # 8 bytes a step; the step is the position, so it needs no storage.
        self._losses = array("d")
        self._flushed = 0

    @property
    def steps_logged(self) -> int:
        return len(self._losses)

    def log_loss(self, loss: float | torch.Tensor) -> None:
        """Record the loss of the next step (0, 1, 2, ...); written to MLflow in batches."""
        self._losses.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))
        if len(self._losses) - self._flushed >= MAX_METRICS_PER_BATCH:
            self.flush()

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Any other metric (test accuracy per epoch, say), written at once."""
        self._client.log_metric(self.run_id, key, value, step=step)

    def flush(self) -> None:
        """Send every loss not yet in MLflow, so a live run's chart follows the training."""
        timestamp = int(time.time() * 1000)
        while self._flushed < len(self._losses):
            end = min(self._flushed + MAX_METRICS_PER_BATCH, len(self._losses))
            metrics = [
                Metric(self.spec.metric, self._losses[step], timestamp, step) for step in range(self._flushed, end)
            ]
            self._client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            self._flushed = end

    def save_exact_losses(self) -> None:
        """Log the losses bit for bit as an artifact (the metric store loses inf and NaN
        payloads) and their digest as a tag."""
        values = np.frombuffer(self._losses, dtype=np.float64) if self._losses else np.empty(0)
        losses = LossSeries(steps=np.arange(len(values), dtype=np.int64), values=values)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(keys.LOSSES_ARTIFACT).name
            np.savez(path, steps=losses.steps, values=losses.values)
            self._client.log_artifact(self.run_id, str(path), artifact_path=keys.ARTIFACT_DIR)
        self._client.set_tag(self.run_id, keys.TAG_LOSS_DIGEST, losses.digest)


@contextmanager
def start_run(spec: BaseSpec, *, run_name: str | None = None) -> Iterator[TrackedRun]:
    """Open (or resume) an MLflow run for ``spec``, seeded and recorded; yields a ``TrackedRun``.

    A run that raises ends FAILED, with every loss logged before the error.
    """
    device = resolve_device(spec.device)
    client = MlflowClient()
    try:
        active = mlflow.start_run(run_name=run_name)
    except (MlflowException, OSError) as err:
        raise TrackingError(describe_store_failure(mlflow.get_tracking_uri(), err)) from err

    with active:
        run_id = active.info.run_id
        seed_record = seed_everything(spec.seed, deterministic=spec.deterministic, threads=spec.threads)
        environment = capture_environment(extra={"run.device": str(device)})
        _record(client, run_id, spec, seed_record, environment)
        tracked = TrackedRun(run_id, spec, device, seed_record, environment, client)
        # MLflow may draw from Python's `random` (run names are drawn from it) while
        # the run is opened and recorded, so the generators are seeded again last,
        # right before the training loop gets control: a run created by `mlflow run`
        # and one created here then start from the same state.
        seed_generators(spec.seed)
        try:
            yield tracked
        except MlreproError as err:
            client.set_tag(run_id, keys.TAG_ERROR, str(err)[:5000])
            raise
        finally:
            tracked.flush()
            tracked.save_exact_losses()


def tag_launcher_run_failure(message: str) -> None:
    """Say on the run ``mlflow run`` opened why the job stopped before training.

    The launcher creates the run before the job can validate its spec; it marks
    it FAILED when the job exits, and this tag tells why. Best effort: a store
    that cannot be reached must not hide the original error.
    """
    run_id = MLFLOW_RUN_ID.get()
    if not run_id:
        return
    try:
        MlflowClient().set_tag(run_id, keys.TAG_ERROR, message[:5000])
    except (MlflowException, OSError):
        pass


def environment_tags(environment: EnvironmentRecord) -> dict[str, str]:
    """The record as MLflow tags: one ``mlrepro.<fact>`` per fact, and its hash."""
    tags = {keys.ENV_TAG_PREFIX + fact: value for fact, value in environment.facts.items()}
    tags[keys.TAG_ENV_HASH] = environment.hash
    return tags


def _record(
    client: MlflowClient, run_id: str, spec: BaseSpec, seed_record: SeedRecord, environment: EnvironmentRecord
) -> None:
    """Log the spec as params and JSON, the environment as tags and JSON."""
    # `mlflow run` has already logged the entry point's parameters as the user typed
    # them ("1e-4"); logging the same key again with other text ("0.0001") is an
    # error in MLflow, so only the fields it did not log are added.
    already_logged = client.get_run(run_id).data.params
    params = {key: value for key, value in spec.to_params().items() if key not in already_logged}
    tags = {keys.TAG_JOB: spec.job, keys.TAG_SPEC_HASH: spec.hash, **environment_tags(environment)}
    mlflow.log_params(params)
    mlflow.set_tags(tags)
    mlflow.log_dict(spec.model_dump(mode="json"), keys.SPEC_ARTIFACT)
    mlflow.log_dict(environment.model_dump(mode="json")["facts"], keys.ENVIRONMENT_ARTIFACT)
    mlflow.log_dict(seed_record.model_dump(mode="json"), keys.SEED_ARTIFACT)
