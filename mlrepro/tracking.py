"""Open an MLflow run for a spec: seed it, record it, and take the loss of every step.

``start_run`` works the same whether the run is new or was created by ``mlflow
run`` (the launcher passes ``MLFLOW_RUN_ID`` and the run is resumed), and against
any tracking URI MLflow supports.
"""

from __future__ import annotations

import json
import tempfile
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlrepro import keys
from mlrepro.compare import LossSeries
from mlrepro.device import resolve_device
from mlrepro.environment import EnvironmentRecord, capture_environment, environment_tags
from mlrepro.checkpoint import Checkpoint, checksum_path, load_checkpoint, save_checkpoint
from mlrepro.diagnosis import differences
from mlrepro.errors import (
    CheckpointError,
    MlreproError,
    RunNotFoundError,
    SpecError,
    TrackingError,
    describe_store_failure,
)
from mlrepro.runs import is_missing_run
from mlrepro.seeding import SeedRecord, seed_everything, seed_generators
from mlrepro.spec import NOT_IN_HASH, BaseSpec, parse_spec
from mlrepro.writer import LossWriter, log_steps

# Steps of a GPU loss gathered on the device before one copy to the host.
DEVICE_BLOCK_STEPS = 1024


class TrackedRun:
    """The training loop's handle on its MLflow run: ``log_loss`` once per step.

    ``log_loss`` costs the loop well under a microsecond for a Python float: the
    value goes into an array (8 bytes a step) and a separate process writes it to
    MLflow (``mlrepro.writer``). A loss tensor on a GPU is copied into a block on
    the device and brought to the host a block at a time, so the loop is not
    synchronised with the GPU every step.
    """

    def __init__(
        self,
        run_id: str,
        spec: BaseSpec,
        device: torch.device,
        seed_record: SeedRecord,
        environment: EnvironmentRecord,
        client: MlflowClient,
        resume: Checkpoint | None = None,
    ) -> None:
        self.run_id = run_id
        self.spec = spec
        self.device = device
        self.seed_record = seed_record
        self.environment = environment
        self._client = client
        # Where a resumed run starts; the job restores its state from it.
        self.resume = resume
        self.first_step = resume.step if resume is not None else 0
        # The step is first_step + the position, so only the value is stored.
        self._losses = array("d")
        self._device_block: torch.Tensor | None = None
        self._device_filled = 0
        self._folder = tempfile.TemporaryDirectory(prefix="mlrepro-")
        self._writer = LossWriter(
            self._losses, client.tracking_uri, run_id, spec.metric, Path(self._folder.name) / "progress",
            first_step=self.first_step,
        )

    @property
    def steps_logged(self) -> int:
        return len(self._losses) + self._device_filled

    def log_loss(self, loss: float | torch.Tensor) -> None:
        """Record the loss of the next step (first_step, first_step + 1, ...), as metric ``spec.metric``."""
        if not isinstance(loss, torch.Tensor):
            self._losses.append(float(loss))
        elif loss.device.type == "cpu":
            self._losses.append(loss.item())
        else:
            self._gather_on_device(loss)

    def _gather_on_device(self, loss: torch.Tensor) -> None:
        block = self._device_block
        if block is None or block.device != loss.device:
            self._bring_device_block_home()
            block = self._device_block = torch.empty(DEVICE_BLOCK_STEPS, dtype=torch.float64, device=loss.device)
        # float32 -> float64 is exact, and the copy is queued on the device: no sync.
        block[self._device_filled].copy_(loss.detach().reshape(()))
        self._device_filled += 1
        if self._device_filled == DEVICE_BLOCK_STEPS:
            self._bring_device_block_home()

    def _bring_device_block_home(self) -> None:
        if self._device_block is not None and self._device_filled:
            self._losses.frombytes(self._device_block[: self._device_filled].cpu().numpy().tobytes())
            self._device_filled = 0

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Any other metric (test accuracy per epoch, say), written at once."""
        self._client.log_metric(self.run_id, key, value, step=step)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Log a checkpoint as an artifact, after handing every loss before it to the writer:
        a run killed right after still has those steps in MLflow."""
        self.flush()
        name = f"step-{checkpoint.step:09d}.pt"
        with tempfile.TemporaryDirectory() as folder:
            path = save_checkpoint(Path(folder) / name, checkpoint)
            for file in (path, checksum_path(path)):
                self._client.log_artifact(self.run_id, str(file), artifact_path=keys.CHECKPOINT_ARTIFACT_DIR)

    def flush(self) -> None:
        """Hand every loss recorded so far to the writer now, and log them bit for bit as the
        exact record: a run that dies after a flush keeps those steps exactly, NaN and inf included."""
        self._bring_device_block_home()
        self._writer.send_now()
        self._log_exact_losses()

    def finish(self) -> None:
        """Wait until every step is in MLflow, then log the exact record and its digest. Nothing the
        loop logged is lost: what the writer process did not log, this process logs itself."""
        self._bring_device_block_home()
        logged = self._writer.close()
        if logged < len(self._losses):
            log_steps(self._client, self.run_id, self.spec.metric, self._losses[logged:], self.first_step + logged)
        losses = self._log_exact_losses()
        # The digest tag also marks the record complete: without it (a killed run), the
        # record ends at the last flush and the metric history holds the steps after.
        self._client.set_tag(self.run_id, keys.TAG_LOSS_DIGEST, losses.digest)
        self._folder.cleanup()

    def _log_exact_losses(self) -> LossSeries:
        """The losses so far as an artifact, bit for bit (the metric store loses inf and NaN payloads).

        Each call rewrites the whole record, 8 bytes a step, so a flush costs about what
        a checkpoint of a small model does."""
        # A copy: while a view of the array exists, the loop's next append would fail to resize it.
        values = np.frombuffer(self._losses, dtype=np.float64).copy() if self._losses else np.empty(0)
        steps = np.arange(self.first_step, self.first_step + len(values), dtype=np.int64)
        losses = LossSeries(steps=steps, values=values)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(keys.LOSSES_ARTIFACT).name
            np.savez(path, steps=losses.steps, values=losses.values)
            self._client.log_artifact(self.run_id, str(path), artifact_path=keys.ARTIFACT_DIR)
        return losses


@contextmanager
def start_run(spec: BaseSpec, *, run_name: str | None = None) -> Iterator[TrackedRun]:
    """Open (or resume) an MLflow run for ``spec``, seeded and recorded; yields a ``TrackedRun``.

    A run that raises ends FAILED, with every loss logged before the error.
    """
    device = resolve_device(spec.device)
    client = MlflowClient()
    resume = newest_checkpoint(client, spec) if spec.resume_from else None
    try:
        active = mlflow.start_run(run_name=run_name)
    except (MlflowException, OSError) as err:
        raise TrackingError(describe_store_failure(mlflow.get_tracking_uri(), err)) from err

    with active:
        run_id = active.info.run_id
        seed_record = seed_everything(spec.seed, deterministic=spec.deterministic, threads=spec.threads)
        environment = capture_environment(extra={"run.device": str(device)})
        _record(client, run_id, spec, seed_record, environment)
        tracked = TrackedRun(run_id, spec, device, seed_record, environment, client, resume)
        if resume is not None:
            client.set_tag(run_id, keys.TAG_RESUMED_FROM, spec.resume_from)
            client.set_tag(run_id, keys.TAG_RESUMED_AT_STEP, str(resume.step))
            client.set_tag(spec.resume_from, keys.TAG_RESUMED_BY, run_id)
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
            tracked.finish()


def newest_checkpoint(client: MlflowClient, spec: BaseSpec) -> Checkpoint:
    """The newest checkpoint of the run ``spec.resume_from``, which must have run the same spec."""
    run_id = spec.resume_from
    try:
        client.get_run(run_id)
        with tempfile.TemporaryDirectory() as folder:
            listed = {entry.path for entry in client.list_artifacts(run_id, keys.ARTIFACT_DIR)}
            if keys.SPEC_ARTIFACT not in listed:
                raise SpecError(f"resume_from: run {run_id} was not logged by an mlrepro job")
            logged = parse_spec(json.loads(Path(client.download_artifacts(run_id, keys.SPEC_ARTIFACT, folder)).read_text()))
            if logged.hash != spec.hash:
                changed = ", ".join(
                    f"{d.key} {d.value_a} there, {d.value_b} here"
                    for d in differences(logged.to_params(), spec.to_params(), {}, {})
                    if d.key not in NOT_IN_HASH
                )
                raise SpecError(f"resume_from: run {run_id} ran another spec ({changed}); resume with the spec it ran")
            names = sorted(
                entry.path for entry in client.list_artifacts(run_id, keys.CHECKPOINT_ARTIFACT_DIR)
                if entry.path.endswith(".pt")
            )
            if not names:
                raise CheckpointError(f"resume_from: run {run_id} logged no checkpoint (its checkpoint_every was 0?)")
            path = Path(client.download_artifacts(run_id, names[-1], folder))
            client.download_artifacts(run_id, names[-1] + ".sha256", folder)
            return load_checkpoint(path)
    except (MlflowException, OSError) as err:
        if is_missing_run(err):
            raise RunNotFoundError(f"resume_from: no run {run_id!r} in the tracking store {client.tracking_uri}") from err
        raise TrackingError(describe_store_failure(client.tracking_uri, err)) from err


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
