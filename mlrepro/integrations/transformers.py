"""The Hugging Face ``Trainer`` under mlrepro: one callback.

    with mlrepro.start_run(spec) as run:
        callback = MlreproCallback(run)
        args = TrainingArguments(..., seed=spec.seed, full_determinism=spec.deterministic, report_to=["mlflow"])
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)

What the callback does:
- logs the loss of every optimizer step as the run's loss, exactly, whatever ``logging_steps`` is:
  the sum of what ``Trainer.training_step`` returned for its micro-batches (each already divided
  for gradient accumulation where the Trainer divides it), which is the loss the Trainer itself
  reports when it logs every step;
- fingerprints the model's parameters and gradients inside ``optimizer.step``: after backward and
  gradient clipping, before the update;
- refuses a ``TrainingArguments.seed`` (or ``data_seed``) other than the spec's: the Trainer seeds
  every generator with its own seed, and the record must say the seed that ran;
- reads the environment again once the Trainer has set its switches (``full_determinism``);
- every ``checkpoint_every`` steps has the Trainer write its own ``checkpoint-N`` folder (optimizer,
  scheduler, every generator, its state) and keeps it, byte for byte, inside an mlrepro checkpoint
  logged to the run; a run started with ``resume_from`` gets the folder back for
  ``trainer.train(resume_from_checkpoint=...)``, the weights from the mlrepro checkpoint;
- with ``report_to="mlflow"``, Hugging Face's ``MLflowCallback`` writes into the same run without a
  clash: its ``loss`` becomes ``transformers/loss``, a parameter that is a spec field is left to the
  spec, and it neither starts nor ends a run of its own.

The Trainer hands a callback no reference to itself; the callback finds it as the caller of the
first event it gets (``on_init_end`` when it is passed in ``Trainer(callbacks=[...])``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch
from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.integrations import MLflowCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging as hf_logging

from mlrepro.errors import CheckpointError, DatasetError, SpecError
from mlrepro.training.checkpoint import Checkpoint, capture_rng_state
from mlrepro.training.runs import RunHandle

TRANSFORMERS_KEY = "transformers"  # where an mlrepro checkpoint keeps the Trainer's own files
STATE_FILE = "trainer_state.json"
# The Trainer's checkpoint files kept, byte for byte; the Trainer reads each back itself, with
# torch.load(weights_only=True) or as JSON. Left out: the weights (they are Checkpoint.model, so a
# checkpoint `check` moves by one ulp resumes moved) and training_args.bin, a pickle of the
# arguments that only code could read back, and that a resume does not read.
KEPT_FILES = (STATE_FILE, "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")
WEIGHTS_FILE = "pytorch_model.bin"  # the Trainer loads it with torch.load(weights_only=True)


class MlreproCallback(TrainerCallback):
    """mlrepro's record of a Hugging Face Trainer run: every optimizer step's loss, fingerprints,
    checkpoints the Trainer resumes from, and its own MLflow logging in the same run."""

    def __init__(self, run: RunHandle) -> None:
        self.run = run
        self._trainer: Trainer | None = None
        self._step_loss: torch.Tensor | None = None
        self._due_step: int | None = None  # the step whose checkpoint the Trainer is saving for mlrepro
        self._save_is_ours = False  # the user's arguments would not have saved at that step
        self._resume_folder: Path | None = None
        self._bars_to_restore = False

    @property
    def resume_from_checkpoint(self) -> str | None:
        """The Trainer's checkpoint folder inside the run's ``resume`` (a ``resume_from`` run, or a
        replay's checkpoint), for ``trainer.train(resume_from_checkpoint=...)``; None for a new run."""
        resume = self.run.resume
        if resume is None:
            return None
        if self._resume_folder is None:
            files = _trainer_files(resume)
            root = Path(tempfile.mkdtemp(prefix="mlrepro-transformers-"))
            atexit.register(shutil.rmtree, root, True)
            folder = root / f"{PREFIX_CHECKPOINT_DIR}-{resume.step}"
            folder.mkdir()
            for name, content in files.items():  # names from KEPT_FILES only: nothing outside the folder
                (folder / name).write_bytes(content)
            # Only what torch.load(weights_only=True) read back: tensors in a dict.
            torch.save(resume.model, folder / WEIGHTS_FILE)
            self._resume_folder = folder
        return str(self._resume_folder)

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self._bind(args)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        self._bind(args)  # a callback added with trainer.add_callback after the Trainer was made
        recapture = getattr(self.run, "recapture_environment", None)
        if recapture is not None:
            recapture()  # the Trainer has set its switches (full_determinism, CUBLAS_WORKSPACE_CONFIG)
        if model is not None:
            # The Trainer wraps the optimizer (accelerate's AcceleratedOptimizer); the step is the inner one's.
            self.run.watch(model, getattr(optimizer, "optimizer", optimizer))
        dataset = getattr(kwargs.get("train_dataloader"), "dataset", None)
        if dataset is not None:
            # A Hugging Face Dataset by its rows; what mlrepro cannot read, the job records itself.
            with contextlib.suppress(DatasetError):
                self.run.log_dataset(dataset)
        if state.global_step != self.run.first_step:
            raise CheckpointError(f"the Trainer starts at step {state.global_step}, the run at step "
                                  f"{self.run.first_step}: pass resume_from_checkpoint=callback.resume_from_checkpoint")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        loss, self._step_loss = self._step_loss, None
        if loss is None:
            raise SpecError("MlreproCallback: the Trainer's training_step returned no loss this step")
        self.run.log_loss(loss)
        every = self.run.spec.checkpoint_every
        if every and state.global_step % every == 0:
            # After Hugging Face's own flow callback: should_save says whether the user's arguments save now.
            self._due_step, self._save_is_ours = state.global_step, not control.should_save
            control.should_save = True
            if self._save_is_ours and hf_logging.is_progress_bar_enabled():
                hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a save the user did not ask for
                self._bars_to_restore = True
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                model: torch.nn.Module | None = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        if self._due_step != state.global_step or model is None:
            return  # a save of the user's own
        self._due_step = None
        if self._bars_to_restore:
            hf_logging.enable_progress_bar()
            self._bars_to_restore = False
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        files = {name: (folder / name).read_bytes() for name in KEPT_FILES if (folder / name).is_file()}
        try:
            steps_in_epoch = len(train_dataloader)
        except TypeError:  # an iterable dataset, of no known length: where in the epoch is not said
            steps_in_epoch = 0
        epoch = int(state.epoch or 0)
        self.run.save_checkpoint(Checkpoint(
            step=state.global_step, epoch=epoch, batch_in_epoch=round(((state.epoch or 0) - epoch) * steps_in_epoch),
            model=model.state_dict(), optimizer=None, rng=capture_rng_state(), extra={TRANSFORMERS_KEY: files}))
        if self._save_is_ours:
            shutil.rmtree(folder, ignore_errors=True)  # kept in the run; the user's output_dir stays as they set it

    def _bind(self, args: TrainingArguments) -> None:
        """Once: find the Trainer, check its seeds, count its losses, share the run with its MLflow logging."""
        if self._trainer is not None:
            return
        trainer = _calling_trainer()
        if trainer is None:
            raise SpecError("MlreproCallback: pass it to the Hugging Face Trainer, in Trainer(callbacks=[...])")
        _check_seeds(args, self.run.spec)
        self._trainer = trainer
        training_step = trainer.training_step

        def training_step_counted(*arguments: Any, **options: Any) -> torch.Tensor:
            loss = training_step(*arguments, **options)
            # What the Trainer adds to its own running loss for this micro-batch, on the device.
            micro = loss.detach()
            self._step_loss = micro if self._step_loss is None else self._step_loss + micro
            return loss

        trainer.training_step = training_step_counted  # type: ignore[method-assign]
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, MLflowCallback) and hasattr(callback, "_ml_flow"):
                callback._ml_flow = _SameRunMlflow(self.run)


def _calling_trainer() -> Trainer | None:
    """The Trainer whose event this is: the first caller up the stack that is one."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def _check_seeds(args: TrainingArguments, spec: Any) -> None:
    """The Trainer seeds every generator with ``args.seed`` as it is made, and shuffles from
    ``args.data_seed`` where that is set: both must be the seed the run records."""
    if args.seed != spec.seed:
        raise SpecError(f"TrainingArguments.seed is {args.seed} but the spec's seed is {spec.seed}: the Trainer "
                        "seeds every generator with its own, so pass seed=spec.seed")
    data_seed = getattr(spec, "data_seed", spec.seed)
    if args.data_seed is not None and args.data_seed != data_seed:
        raise SpecError(f"TrainingArguments.data_seed is {args.data_seed}, which the spec does not record: leave it "
                        f"unset (the Trainer then shuffles from seed={spec.seed}) or add a data_seed field to the spec")


def _trainer_files(resume: Checkpoint) -> dict[str, bytes]:
    """The Trainer's files in an mlrepro checkpoint, checked: known names, bytes, a state at its step."""
    files = resume.extra.get(TRANSFORMERS_KEY)
    if not isinstance(files, dict):
        raise CheckpointError(f"the checkpoint at step {resume.step} was not saved by mlrepro's Hugging Face "
                              "callback: it holds no Trainer checkpoint to resume from")
    unknown = [name for name in files if name not in KEPT_FILES]
    if unknown or not all(isinstance(content, bytes) for content in files.values()):
        raise CheckpointError(f"the checkpoint at step {resume.step} holds a Trainer file mlrepro does not write "
                              f"({(unknown or ['a value that is not bytes'])[0]!r}); it was not used")
    try:
        step = json.loads(files[STATE_FILE])["global_step"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint at step {resume.step} holds no readable {STATE_FILE}") from err
    if step != resume.step:
        raise CheckpointError(f"the checkpoint at step {resume.step} holds the Trainer's state at step {step}")
    return files


class _SameRunMlflow:
    """``mlflow`` as Hugging Face's ``MLflowCallback`` calls it, on mlrepro's run: the run is
    mlrepro's to start and end; its ``loss`` series is the exact one, every optimizer step from 0, so
    the Trainer's (an average over ``logging_steps``, from step 1) is renamed; a parameter that is a
    spec field is the spec's (the same key with other text is an error in MLflow: 'True' vs 'true')."""

    def __init__(self, run: RunHandle) -> None:
        self._spec_params = run.spec.to_params()
        self._loss_metric = run.spec.metric

    def __getattr__(self, name: str) -> Any:
        return getattr(mlflow, name)

    def start_run(self, *args: Any, **kwargs: Any) -> Any:
        return mlflow.active_run()

    def end_run(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_experiment(self, *args: Any, **kwargs: Any) -> None:
        return None  # the run's experiment is the one it was opened in

    def log_params(self, params: dict[str, Any], **kwargs: Any) -> None:
        kept = {key: value for key, value in params.items() if key not in self._spec_params}
        if kept:
            mlflow.log_params(kept, **kwargs)

    def log_metrics(self, metrics: dict[str, float], **kwargs: Any) -> None:
        renamed = {(f"transformers/{key}" if key == self._loss_metric else key): value for key, value in metrics.items()}
        mlflow.log_metrics(renamed, **kwargs)
