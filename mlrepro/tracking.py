"""Open an MLflow run for a spec: seed it, record it, and take the loss of every step.

``start_run`` works the same whether the run is new or was created by ``mlflow
run`` (the launcher passes ``MLFLOW_RUN_ID`` and the run is resumed), and against
any tracking URI MLflow supports.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.tracking import MlflowClient

from mlrepro import record
from mlrepro.checkpoint import Checkpoint
from mlrepro.code import capture_code
from mlrepro.device import resolve_device
from mlrepro.environment import EnvironmentRecord, capture_environment
from mlrepro.errors import MlreproError, redacted_uri
from mlrepro.losses import LossSeries
from mlrepro.plugin import recording_own_run
from mlrepro.seeding import SeedRecord, seed_everything, seed_generators
from mlrepro.signals import RunInterrupted, interruptible
from mlrepro.spec import BaseSpec
from mlrepro.writer import LossWriter

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
        self.resumed_from: str | None = None  # the run it continues, set by start_run
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
        record.write_metric(self._client, self.run_id, key, value, step)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Log a checkpoint as an artifact, after handing every loss before it to the writer:
        a run killed right after still has those steps in MLflow."""
        self.flush()
        record.write_checkpoint(self._client, self.run_id, checkpoint)

    def flush(self) -> None:
        """Hand every loss recorded so far to the writer now, and log them bit for bit as the
        exact record: a run that dies after a flush keeps those steps exactly, NaN and inf included."""
        self._bring_device_block_home()
        self._writer.send_now()
        record.write_losses(self._client, self.run_id, self._losses_so_far(), complete=False)

    def finish(self) -> None:
        """Wait until every step is in MLflow, then log the exact record and its digest. Nothing the
        loop logged is lost: what the writer process did not log, this process logs itself."""
        self._bring_device_block_home()
        logged = self._writer.close()
        if logged < len(self._losses):
            record.write_loss_metrics(self._client, self.run_id, self.spec.metric, self._losses[logged:],
                                      self.first_step + logged)
        own = self._losses_so_far()
        stitched = None
        if self.resumed_from is not None:
            stitched = record.read_losses(self._client, self.resumed_from).spliced(own, self.first_step)
        record.write_losses(self._client, self.run_id, own, complete=True, stitched=stitched)
        self._folder.cleanup()

    def _losses_so_far(self) -> LossSeries:
        # A copy: while a view of the array exists, the loop's next append would fail to resize it.
        values = np.frombuffer(self._losses, dtype=np.float64).copy() if self._losses else np.empty(0)
        steps = np.arange(self.first_step, self.first_step + len(values), dtype=np.int64)
        return LossSeries(steps=steps, values=values)


@contextmanager
def start_run(spec: BaseSpec, *, run_name: str | None = None) -> Iterator[TrackedRun]:
    """Open (or resume) an MLflow run for ``spec``, seeded and recorded; yields a ``TrackedRun``.

    Everything is checked before a run exists: the device, and for ``resume_from`` the
    run, its spec and its checkpoint. A run that raises ends FAILED, with every loss
    logged before the error; one stopped by SIGINT or SIGTERM ends KILLED, with every
    loss too, and raises ``RunInterrupted``. Started outside ``mlflow run``, it says
    which run it is.
    """
    device = resolve_device(spec.device)
    client = record.ready_store(mlflow.get_tracking_uri())
    resumed_from, resume = record.read_newest_checkpoint(client, spec) if spec.resume_from else (None, None)
    launched = bool(MLFLOW_RUN_ID.get())
    code = capture_code()  # before the run: the sources loaded by now are the job's
    with record.store_errors(client), recording_own_run():
        active = mlflow.start_run(run_name=run_name)

    with active:
        run_id = active.info.run_id
        seed_record = seed_everything(spec.seed, deterministic=spec.deterministic, threads=spec.threads)
        environment = capture_environment(extra={"run.device": str(device), **code.facts()})
        record.write_start(client, run_id, spec, seed_record, environment, code)
        tracked = TrackedRun(run_id, spec, device, seed_record, environment, client, resume)
        if resumed_from is not None and resume is not None:
            record.write_resume_links(client, run_id, resumed_from, resume.step)
            tracked.resumed_from = resumed_from
        if not launched:  # `mlflow run` prints the run id itself
            print(f"mlrepro: run {run_id} in {redacted_uri(client.tracking_uri)}", file=sys.stderr, flush=True)
        if resume is not None:
            print(f"mlrepro: continues run {resumed_from} from step {resume.step}", file=sys.stderr, flush=True)
        with interruptible() as interruption:
            # MLflow may draw from Python's `random` (run names are drawn from it) while
            # the run is opened and recorded, so the generators are seeded again last,
            # right before the training loop gets control: a run created by `mlflow run`
            # and one created here then start from the same state.
            seed_generators(spec.seed)
            try:
                yield tracked
            except MlreproError as err:
                record.write_error(client, run_id, str(err))
                raise
            except BaseException as err:
                if interruption.signum is None:
                    raise
                # Saving starts before the loop's frames go: a DataLoader iterator shut down with
                # them must not complain that the group's SIGTERM killed its workers.
                interruption.saving()
                # The loop may also have failed on those workers first: the signal still ended the run.
                raise _interrupted(interruption.signum, tracked) from (None if isinstance(err, RunInterrupted) else err)
            finally:
                interruption.saving()
                tracked.finish()
                if interruption.signum is not None:
                    record.write_ended_by_signal(client, run_id, signal.Signals(interruption.signum).name)
                    mlflow.end_run("KILLED")  # before the `with` marks it FAILED
            if interruption.signum is not None:  # arrived while the run was being saved
                raise _interrupted(interruption.signum, tracked)


def _interrupted(signum: int, tracked: TrackedRun) -> RunInterrupted:
    interrupted = RunInterrupted(signum)
    interrupted.run_id, interrupted.steps = tracked.run_id, tracked.first_step + tracked.steps_logged
    return interrupted
