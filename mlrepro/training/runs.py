"""The training loop's handle on its run: ``TrackedRun`` on the process that owns the run (rank 0, or
the only process), ``RankRun`` (``mlrepro.training.rank_run``) on every other rank under torchrun. Both
answer ``RunHandle``, so a training function is written once for either."""

from __future__ import annotations

import hashlib
import re
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from mlrepro.capture.datasets import DatasetRecord, describe_dataset
from mlrepro.capture.environment import (
    COLLECTORS,
    EnvironmentRecord,
    capture_environment,
)
from mlrepro.capture.fingerprints import FingerprintRecord
from mlrepro.capture.losses import LossSeries
from mlrepro.capture.seed_record import SeedRecord
from mlrepro.capture.spec import BaseSpec
from mlrepro.errors import SpecError
from mlrepro.store import checkpoints, keys, record
from mlrepro.store.delivery import Delivery, Pending, deliver_until, delivering, holding
from mlrepro.store.failures import StoreRefusedError
from mlrepro.store.spool import (
    STORE_WAIT_ENV,
    Spool,
    store_wait_s,
)
from mlrepro.store.writer import LossWriter
from mlrepro.training import distributed
from mlrepro.training.checkpoint import (
    Checkpoint,
    checksum_path,
    save_checkpoint,
)
from mlrepro.training.loop import Loop
from mlrepro.training.orders import StopRequested
from mlrepro.training.watch import Watch


class RunHandle(Protocol):
    """What a training function may ask of its run, on any rank."""

    run_id: str
    spec: BaseSpec
    device: torch.device
    seed_record: SeedRecord
    resume: Checkpoint | None
    first_step: int

    def log_loss(self, loss: float | torch.Tensor) -> None: ...

    def log_metric(self, key: str, value: float, step: int) -> None: ...

    def watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
              loss: torch.nn.Module | None = None) -> None: ...

    def fingerprint(self) -> None: ...

    def log_dataset(self, source: Any, name: str | None = None, digest: str | None = None,
                    context: str = "train") -> DatasetRecord | None: ...

    def save_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def flush(self) -> None: ...

    def epochs(self, first: int, stop: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               scheduler: Any = None) -> Iterator[int]: ...

    def batches(self, loader: Iterable[Any], epoch: int | None = None) -> Iterator[tuple[int, Any]]: ...

    def checkpoint_if_due(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                          scheduler: Any = None, extra: dict[str, Any] | None = None) -> bool: ...

    def log_model(self, model: torch.nn.Module, name: str = "model") -> None: ...


class _LoopMethods:
    """The loop helpers (``mlrepro.training.loop``) on a run: one ``Loop`` a run, made on first use."""

    resume: Checkpoint | None
    spec: BaseSpec
    first_step: int
    _loop_state: Loop | None = None

    def _steps_done(self) -> int:
        raise NotImplementedError

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        raise NotImplementedError

    @property
    def _loop(self) -> Loop:
        if self._loop_state is None:
            self._loop_state = Loop(self.resume, self.spec.checkpoint_every, self.save_checkpoint, self._steps_done)
        return self._loop_state

    def epochs(self, first: int, stop: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               scheduler: Any = None) -> Iterator[int]:
        """``range(first, stop)``; in a resumed run from the checkpoint's epoch, with the model, optimizer
        and scheduler restored (``mlrepro.training.loop``)."""
        return self._loop.epochs(first, stop, model, optimizer, scheduler)

    def batches(self, loader: Iterable[Any], epoch: int | None = None) -> Iterator[tuple[int, Any]]:
        """``enumerate(loader)``; in a resumed run's first epoch from the batch after its checkpoint,
        with the shuffle order and every generator as the whole run had them."""
        return self._loop.batches(loader, epoch)

    def checkpoint_if_due(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                          scheduler: Any = None, extra: dict[str, Any] | None = None) -> bool:
        """Save a checkpoint every ``spec.checkpoint_every`` steps: call once a step, after ``log_loss``."""
        return self._loop.checkpoint_if_due(model, optimizer, scheduler, extra)


_ARTIFACT_FOLDER = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")

# Steps of a GPU loss gathered on the device before one copy to the host.
DEVICE_BLOCK_STEPS = 1024


class TrackedRun(_LoopMethods):
    """The training loop's handle on its MLflow run: ``log_loss`` once per step.

    ``log_loss`` costs the loop well under a microsecond for a Python float: the
    value goes into an array (8 bytes a step), is appended to the run's local spool
    within ``SEND_INTERVAL_S``, and a separate process delivers it to MLflow
    (``mlrepro.store.writer``). A loss tensor on a GPU is copied into a block on the device
    and brought to the host a block at a time, so the loop is not synchronised with
    the GPU every step. Every other write of the run (``log_metric``, checkpoints, the
    exact record, the end) goes through the spool too: a store that fails never stops
    the training, and nothing is lost (``mlrepro sync`` delivers what waited).
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
        world: distributed.World | None = None,
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
        self.resumed_losses: LossSeries | None = None  # that run's losses, read while the store answers
        self.named_by_mlrepro = False  # set by start_run where neither the caller nor `mlflow run` named the run
        self.first_step = resume.step if resume is not None else 0
        # The step is first_step + the position, so only the value is stored.
        self._losses = array("d")
        self._device_block: torch.Tensor | None = None
        self._device_filled = 0
        # Under torchrun: this rank's losses not yet gathered, and every rank's gathered ones.
        self.world = world
        self._rank_pending: list[float] = []
        self._rank_losses = [array("d") for _ in range(world.size)] if world is not None else []
        self._watch: Watch | None = None
        self._checkpoint_steps: list[int] = []  # this run's checkpoints still kept, oldest first
        self.opened_environment = environment  # as recorded when the run opened
        self._environment_read_in_training = False
        self.spool = Spool.create(run_id, client.tracking_uri, spec.metric, self.first_step)
        self._writer = LossWriter(self._losses, self.spool, client.tracking_uri)

    @property
    def tracking_uri(self) -> str:
        """The store the run is in, for a framework's own MLflow logger to write to the same run."""
        return self._client.tracking_uri

    def watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
              loss: torch.nn.Module | None = None) -> None:
        """Fingerprint the batches ``model`` is handed (and the targets ``loss`` is, where it is given),
        its parameters and its gradients every ``spec.fingerprint_every`` steps, so that compare can
        say whether the data or which tensor parted first, and when. One call, before the loop.

        With ``optimizer``, a fingerprint is taken inside every ``optimizer.step()``, after backward
        and before it updates anything, a closure's backward included (LBFGS, Lightning); a loop that updates the weights itself calls ``run.fingerprint()`` once
        a step, after backward and before the update. Both count the steps from the run's first."""
        if self._watch is not None:  # watched again: the new model (and optimizer) replace the old
            self._watch.close()
        self._watch = Watch(model, self.spec.fingerprint_every, self.first_step, loss)
        if optimizer is not None:
            self._watch.follow(optimizer)

    def fingerprint_batch(self, batch: Any) -> None:
        """Hand the step's batch (tensors, in tuples, lists and dicts) to the fingerprints, for a loop
        that does not call the watched model with it (Lightning's ``training_step``): from then on the
        model's forward is not looked at for data, so nothing is counted twice."""
        if self._watch is not None:
            self._watch.see_batch(batch)

    def watched_model(self) -> torch.nn.Module | None:
        """The model ``watch`` was given, if it was: what a replay's trace counts steps on."""
        return self._watch.model if self._watch is not None else None

    def stop_after(self, steps: int) -> None:
        """End the loop (``StopRequested``) once steps 0 .. ``steps - 1`` are logged: a leg of ``mlrepro
        check``. Only such a run pays for the test, in a ``log_loss`` of its own."""
        log_loss = self.log_loss

        def log_then_maybe_stop(loss: float | torch.Tensor) -> None:
            log_loss(loss)
            if self.first_step + self.steps_logged >= steps:
                raise StopRequested

        self.log_loss = log_then_maybe_stop  # type: ignore[method-assign]

    def fingerprint(self) -> None:
        """This step's fingerprints (at the steps ``spec.fingerprint_every`` picks), for a loop without
        an optimizer that ``watch`` was given: call it after backward, before the update."""
        if self._watch is None:
            raise SpecError("run.fingerprint(): call run.watch(model) once before the loop first")
        self._watch.step()

    def _fingerprints(self) -> FingerprintRecord | None:
        return self._watch.record() if self._watch is not None and self.spec.fingerprint_every else None

    @property
    def steps_logged(self) -> int:
        return len(self._losses) + self._device_filled + len(self._rank_pending)

    def _steps_done(self) -> int:
        return self.first_step + self.steps_logged

    def recapture_environment(self) -> dict[str, tuple[str, str]]:
        """Read the environment again, as training finds it: a framework sets its own determinism
        switches once the run is open (Lightning's ``Trainer(deterministic=...)``, Hugging Face's
        ``enable_full_determinism``), and a script may change one itself. Where a fact differs from
        the record, the record is rewritten as it is now, with the tag ``mlrepro.environment_changed``
        naming each change. Called at the first step, and by the framework callbacks as training
        starts; costs a few milliseconds. The changes since the run opened."""
        self._environment_read_in_training = True
        known = {fact: value for fact, value in self.opened_environment.facts.items() if fact not in COLLECTORS}
        now = capture_environment(extra=known)
        opened = self.opened_environment.facts
        changed = {fact: (opened.get(fact, ""), now.facts.get(fact, "")) for fact in sorted({*opened, *now.facts})
                   if opened.get(fact) != now.facts.get(fact)}
        if changed and now.facts != self.environment.facts:
            self.environment = now
            record.write_environment_change(self.spool, self.run_id, now, changed)
            self._writer.send_now()
        return changed

    def log_dataset(self, source: Any, name: str | None = None, digest: str | None = None,
                    context: str = "train") -> DatasetRecord:
        """Record a dataset the run trains on (``mlrepro.capture.datasets``): a path, a torch or Hugging
        Face ``Dataset``, or an ``mlflow.data`` dataset, with a digest of its content. MLflow's UI
        shows it; compare names a changed digest right after the code."""
        dataset = describe_dataset(source, name, digest, context)
        self.spool.log_dataset(self.run_id, **dataset.model_dump())
        self._writer.send_now()
        return dataset

    def log_model(self, model: torch.nn.Module, name: str = "model") -> None:
        """The trained weights as artifacts under ``name/``: ``state_dict.pt`` (``model.state_dict()``,
        read back with ``torch.load(weights_only=True)``, which runs no code) and its SHA-256 beside it.
        Spooled like a checkpoint: a store that is away gets it later; a later call replaces it."""
        if not _ARTIFACT_FOLDER.fullmatch(name) or ".." in name.split("/") or name.split("/")[0] == "mlrepro":
            raise SpecError(f"log_model: name {name!r} must be a relative folder of letters, digits, _ - . "
                            "(not .., not mlrepro/)")
        self.flush()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "state_dict.pt"
            torch.save(model.state_dict(), path)
            checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
            checkpoints.write_model(self.spool, self.run_id, path, name)
        self._writer.send_now()

    def log_loss(self, loss: float | torch.Tensor) -> None:
        """Record the loss of the next step (first_step, first_step + 1, ...), as metric ``spec.metric``.

        Under torchrun every rank calls it every step; the metric is the mean over ranks, and the
        exact record keeps each rank's loss."""
        if not self._environment_read_in_training:
            self.recapture_environment()
        if self.world is not None:
            self._rank_pending.append(loss.item() if isinstance(loss, torch.Tensor) else float(loss))
            if len(self._rank_pending) == distributed.GATHER_EVERY:
                self._gather_ranks()
        elif not isinstance(loss, torch.Tensor):
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

    def _gather_ranks(self) -> None:
        """Every rank's pending losses, on this rank (0): each rank's kept, their mean logged. A
        collective: every rank gathers at the same steps (every GATHER_EVERY, and at each flush)."""
        if not self._rank_pending:
            return  # the same on every rank: they log in step
        per_rank = distributed.gather_on_rank_0(self._rank_pending)
        self._rank_pending = []
        for kept, values in zip(self._rank_losses, per_rank or []):
            kept.extend(values)
        for values in zip(*(per_rank or [])):
            self._losses.append(sum(values) / len(values))  # in rank order, in float64: the same bits each time

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Any other metric (test accuracy per epoch, say), spooled now and delivered in order."""
        record.write_metric(self.spool, self.run_id, key, value, step)
        self._writer.send_now()

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a checkpoint in the spool at once, after every loss before it; the writer
        uploads it as an artifact. A run killed right after keeps it and those steps."""
        self.flush()
        if self.world is not None:
            # Each rank draws from its own generators: the checkpoint keeps every rank's, so that
            # each rank of a resumed run goes on from its own.
            ranks = distributed.gather_objects_on_rank_0(distributed.rank_state(checkpoint.rng, checkpoint.extra))
            checkpoint = replace(checkpoint, extra={**checkpoint.extra, distributed.RANKS_KEY: ranks})
        with tempfile.TemporaryDirectory() as folder:  # the spool keeps its own copy
            path = save_checkpoint(Path(folder) / keys.checkpoint_file(checkpoint.step), checkpoint)
            checkpoints.write_checkpoint(self.spool, self.run_id, path)
        # The newest keep_checkpoints stay; an older one goes once the new one is in the spool, never before.
        self._checkpoint_steps.append(checkpoint.step)
        while self.spec.keep_checkpoints and len(self._checkpoint_steps) > self.spec.keep_checkpoints:
            self.spool.delete_checkpoint(self.run_id, self._checkpoint_steps.pop(0))
        self._writer.send_now()

    def flush(self) -> None:
        """Spool every loss recorded so far now, and with them the exact record, bit for bit:
        a run that dies after a flush keeps those steps exactly, NaN and inf included."""
        self._bring_device_block_home()
        if self.world is not None:
            self._gather_ranks()
        self._writer.send_now()
        record.write_losses(self.spool, self.run_id, self._losses_so_far(), complete=False, per_rank=self._per_rank(),
                            fingerprints=self._fingerprints())

    def finish(self, status: str) -> Pending:
        """End the run ``status``: spool every step, the exact record and its digest, and the end,
        then wait until the store holds all of it, for as long as it takes them, and at most
        ``MLREPRO_STORE_WAIT_S`` for a store that takes nothing. What a writer process that died
        did not deliver, this process delivers itself. What is still pending then stays in the
        spool, and is returned."""
        patience_s = store_wait_s()
        self._bring_device_block_home()
        if self.world is not None:
            self._gather_ranks()  # the last gather; every other rank makes it as its block ends
        self._writer.stop_sending()
        own = self._losses_so_far()
        stitched = self.resumed_losses.spliced(own, self.first_step) if self.resumed_losses is not None else None
        record.write_losses(self.spool, self.run_id, own, complete=True, stitched=stitched, per_rank=self._per_rank(),
                            fingerprints=self._fingerprints())
        if self.named_by_mlrepro:  # the job's name and how far it went, not MLflow's "fortunate-wren-835"
            record.write_run_name(self.spool, self.run_id, f"{self.spec.job}, {self.first_step + len(own)} steps")
        record.end_run(self.spool, self.run_id, status)
        self.spool.close()
        outcome = self._writer.close(patience_s)
        if outcome == "delivered" or not self.spool.folder.exists():
            return Pending(self.run_id, 0, 0, False, self.spool.folder)
        with holding(self.spool.folder), delivering():
            delivery = Delivery(self.spool.folder, self._client)
            if outcome == "stalled":  # the store took nothing for that long: asking again would double the wait
                pending = delivery.pending()
            else:
                try:
                    pending = deliver_until(delivery, patience_s)
                except StoreRefusedError as err:
                    return replace(delivery.pending(), reason=str(err))
                if pending.nothing:
                    delivery.remove()
                    return pending
        # Why, as the writer last heard it from the store; else only that time ran out.
        return pending if pending.reason else \
            replace(pending, reason=f"it took nothing for {STORE_WAIT_ENV}={patience_s:g} s")

    def _per_rank(self) -> np.ndarray | None:
        """Every rank's losses, one row a rank, under torchrun."""
        return np.array([np.frombuffer(kept, dtype=np.float64) for kept in self._rank_losses]) \
            if self.world is not None else None

    def _losses_so_far(self) -> LossSeries:
        # A copy: while a view of the array exists, the loop's next append would fail to resize it.
        values = np.frombuffer(self._losses, dtype=np.float64).copy() if self._losses else np.empty(0)
        steps = np.arange(self.first_step, self.first_step + len(values), dtype=np.int64)
        return LossSeries(steps=steps, values=values)
