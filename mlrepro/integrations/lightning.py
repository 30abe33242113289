"""PyTorch Lightning under mlrepro: one callback, and a loader that resumes mid-epoch.

    with mlrepro.start_run(spec) as run:
        callback = MlreproCallback(run)
        trainer = L.Trainer(callbacks=[callback], logger=mlflow_logger(run), deterministic=spec.deterministic, ...)
        trainer.fit(model, resumable(train_loader), ckpt_path=callback.ckpt_path)

What the callback does, on every rank a run has:
- logs the loss of every optimizer step as the run's loss, exactly: the mean of its micro-batches'
  losses under gradient accumulation (Lightning hands ``on_train_batch_end`` each micro-batch's
  loss divided by ``accumulate_grad_batches``; their sum is the step's);
- fingerprints the module's parameters and gradients inside ``optimizer.step``, after the closure's
  backward (``run.watch`` follows a closure);
- reads the environment again once the Trainer has set its switches;
- every ``checkpoint_every`` steps saves Lightning's own checkpoint (loops, optimizers, schedulers,
  callbacks, and the loader's position and every generator) inside an mlrepro checkpoint, logged
  to the run; a run started with ``resume_from`` hands it back to ``trainer.fit`` as ``ckpt_path``.

Lightning ≥ 2.0 resumes mid-epoch only where the training loader is stateful (``state_dict`` /
``load_state_dict``); ``resumable`` makes a ``DataLoader`` so, as ``mlrepro.training.loop`` does for
a plain loop: the generators' states at the epoch's start and at the checkpoint, and the batches
done, which a resumed loader loads again (its workers stay in step) before it goes on.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader

from mlrepro.errors import CheckpointError, DatasetError, SpecError
from mlrepro.training.checkpoint import Checkpoint, capture_rng_state
from mlrepro.training.loop import EpochPosition, enter_epoch
from mlrepro.training.runs import RunHandle

LIGHTNING_KEY = "lightning"  # where an mlrepro checkpoint keeps Lightning's own, its weights left out


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that says where it is in its epoch, and starts there again after a resume."""
    _mlrepro_epoch_start: dict[str, Any] | None = None
    _mlrepro_done = 0
    _mlrepro_to_load: dict[str, Any] | None = None

    def _mlrepro_generators(self) -> dict[str, torch.Generator]:
        generator = getattr(self, "generator", None)
        return {"loader": generator} if isinstance(generator, torch.Generator) else {}

    def __iter__(self) -> Any:
        return self._mlrepro_batches()

    def _mlrepro_batches(self) -> Any:
        generators = self._mlrepro_generators()
        state, self._mlrepro_to_load = self._mlrepro_to_load, None
        position = None if state is None else EpochPosition(state["epoch_start_rng"], int(state["batches_done"]),
                                                            state["rng"])
        self._mlrepro_epoch_start, batches, self._mlrepro_done = enter_epoch(_Plain(self), generators, position)
        for batch in batches:
            self._mlrepro_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch is: saved by Lightning in its checkpoint's loop state."""
        generators = self._mlrepro_generators()
        return {"epoch_start_rng": self._mlrepro_epoch_start or capture_rng_state(generators),
                "batches_done": self._mlrepro_done, "rng": capture_rng_state(generators)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Lightning hands back the state on a resume mid-epoch; the next epoch's iterator starts there."""
        self._mlrepro_to_load = state


class _Plain:
    """The loader iterated as a plain ``DataLoader``: its own ``__iter__`` without this class's."""

    def __init__(self, loader: ResumableLoader) -> None:
        self._loader = loader

    def __iter__(self) -> Any:
        return super(ResumableLoader, self._loader).__iter__()


def resumable(loader: DataLoader) -> DataLoader:
    """``loader`` itself, made a ``ResumableLoader``: still the same ``DataLoader`` to Lightning (which
    may rebuild it with a distributed sampler), with ``state_dict`` and ``load_state_dict``."""
    if isinstance(loader, ResumableLoader):
        return loader
    if not isinstance(loader, DataLoader):
        raise SpecError(f"resumable: expects a torch DataLoader, got {type(loader).__name__}")
    kind = type(loader)
    loader.__class__ = ResumableLoader if kind is DataLoader else \
        type(f"Resumable{kind.__name__}", (ResumableLoader, kind), {})
    return loader


class MlreproCallback(pl.Callback):
    """mlrepro's record of a Lightning run: every optimizer step's loss, fingerprints, checkpoints."""

    def __init__(self, run: RunHandle) -> None:
        self.run = run
        self._step_loss: torch.Tensor | None = None
        self._steps_seen = 0
        self._ckpt_folder: Path | None = None

    @property
    def ckpt_path(self) -> str | None:
        """Lightning's checkpoint inside the run's ``resume`` (a ``resume_from`` run, or a replay's
        checkpoint), as a file for ``trainer.fit(ckpt_path=...)``; None for a new run. The weights are
        the mlrepro checkpoint's own, so a checkpoint ``check`` moved by one ulp resumes moved."""
        resume = self.run.resume
        if resume is None:
            return None
        lightning = resume.extra.get(LIGHTNING_KEY)
        if not isinstance(lightning, dict):
            raise CheckpointError(f"the checkpoint at step {resume.step} was not saved by mlrepro's Lightning "
                                  "callback: it holds no Lightning checkpoint to resume from")
        if self._ckpt_folder is None:
            self._ckpt_folder = Path(tempfile.mkdtemp(prefix="mlrepro-lightning-"))
            atexit.register(shutil.rmtree, self._ckpt_folder, True)
        path = self._ckpt_folder / f"step-{resume.step}.ckpt"
        if not path.exists():
            # Only what torch.load(weights_only=True) read back: tensors, numbers, strings, containers.
            torch.save({**lightning, "state_dict": resume.model}, path)
        return str(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recapture = getattr(self.run, "recapture_environment", None)
        if recapture is not None:
            recapture()  # the Trainer has set its switches (deterministic=..., CUBLAS_WORKSPACE_CONFIG)
        optimizers = trainer.optimizers
        self.run.watch(pl_module, optimizers[0] if len(optimizers) == 1 else None)
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is not None:  # what mlrepro cannot read, the job records itself: run.log_dataset(path)
            with contextlib.suppress(DatasetError):
                self.run.log_dataset(dataset)
        self._steps_seen = trainer.global_step
        if self.run.spec.checkpoint_every:
            loaders = trainer.train_dataloader
            flat = loaders if isinstance(loaders, (list, tuple)) else \
                list(loaders.values()) if isinstance(loaders, dict) else [loaders]
            if not all(isinstance(loader, ResumableLoader) for loader in flat):
                raise SpecError("checkpoint_every: Lightning resumes mid-epoch only from a stateful loader: pass "
                                "mlrepro.lightning.resumable(train_loader) to trainer.fit")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """The batch Lightning hands ``training_step``, inputs and targets: a training step need not
        call the module itself, so its forward is no place to see the data."""
        hand_over = getattr(self.run, "fingerprint_batch", None)
        if hand_over is not None:
            hand_over(batch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            self._step_loss = loss if self._step_loss is None else self._step_loss + loss
        if trainer.global_step == self._steps_seen:
            return  # a micro-batch of an optimizer step still accumulating
        self._steps_seen = trainer.global_step
        if self._step_loss is None:
            raise SpecError("MlreproCallback: training_step returned no loss (return it, or {'loss': ...})")
        self.run.log_loss(self._step_loss)
        self._step_loss = None
        every = self.run.spec.checkpoint_every
        if every and trainer.global_step % every == 0:
            self._save_checkpoint(trainer, pl_module, batch_idx)

    def _save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "lightning.ckpt"
            trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes
            if not path.exists():  # another rank: it hands over its generators through save_checkpoint
                content: dict[str, Any] = {}
            else:
                content = torch.load(path, map_location="cpu", weights_only=True)
        content.pop("state_dict", None)
        self.run.save_checkpoint(Checkpoint(
            step=trainer.global_step, epoch=trainer.current_epoch, batch_in_epoch=batch_idx + 1,
            model=pl_module.state_dict(), optimizer=None, rng=capture_rng_state(), extra={LIGHTNING_KEY: content}))


class _MlreproMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger on mlrepro's run, that never clashes with what mlrepro logs there."""

    def __init__(self, run: RunHandle, **options: Any) -> None:
        super().__init__(run_id=run.run_id, **options)
        self._spec_params = run.spec.to_params()
        self._loss_metric = run.spec.metric

    def log_hyperparams(self, params: Any) -> None:
        # A spec field mlrepro logged is the record; the same key with other text is an error in MLflow.
        flat = dict(params) if isinstance(params, dict) else vars(params)
        super().log_hyperparams({key: value for key, value in flat.items() if key not in self._spec_params})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # mlrepro's loss series is the exact one, every optimizer step from 0: Lightning's own is renamed.
        renamed = {(f"lightning/{key}" if key == self._loss_metric else key): value for key, value in metrics.items()}
        super().log_metrics(renamed, step)


def mlflow_logger(run: RunHandle, **options: Any) -> MLFlowLogger:
    """Lightning's ``MLFlowLogger`` bound to ``run``: its metrics and hyperparameters go into the same
    MLflow run as mlrepro's record, without a second ``loss`` series or a rejected parameter."""
    uri = getattr(run, "tracking_uri", None)  # rank 0's run; Lightning logs on rank 0 only
    if uri is not None and "tracking_uri" not in options:
        options["tracking_uri"] = uri
    return _MlreproMLFlowLogger(run, **options)
