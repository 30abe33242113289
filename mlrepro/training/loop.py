"""Epochs and batches that a resumed run enters where its checkpoint left them, and checkpoints taken
when due: what every training loop must get right to resume mid-epoch bit for bit, in three calls.

    for epoch in run.epochs(1, epochs + 1, model, optimizer, scheduler):
        for batch_idx, (data, target) in run.batches(train_loader, epoch):
            ...; run.log_loss(loss)
            run.checkpoint_if_due(model, optimizer, scheduler)

Why a position and the generators are not enough: an epoch's shuffle order (a ``RandomSampler``
without a generator draws its seed from torch's global generator) and its workers' base seed are
drawn as its iterator starts. A checkpoint therefore keeps the generators' states at the start of
its epoch as well as at its step. A resumed run goes back to the first to draw the same order,
loads the batches done before the checkpoint (so a loader's workers stay in step, and nothing is
skipped by guessing at indices), then returns to the second, before the next batch is loaded:
a transform that draws in the main process draws what it drew in the whole run.

What this does not restore: the generators inside persistent workers (``persistent_workers=True``)
carry over from earlier epochs in the whole run and start afresh in the resumed one, so random
augmentations in such workers differ after a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mlrepro.errors import CheckpointError
from mlrepro.training.checkpoint import Checkpoint, capture_rng_state, restore_rng_state

# Where a checkpoint keeps the generators' states at the start of its epoch.
EPOCH_START_RNG = "mlrepro.epoch_start_rng"
_END = object()


@dataclass(frozen=True)
class EpochPosition:
    """Where a checkpoint left its epoch: the generators' states as the epoch's iterator started (None
    where no batch of it was done), the batches done, and the states at the checkpoint."""

    epoch_start_rng: dict[str, Any] | None
    batches_done: int
    rng: dict[str, Any]


def enter_epoch(loader: Iterable[Any], generators: dict[str, torch.Generator],
                position: EpochPosition | None) -> tuple[dict[str, Any], Iterator[Any], int]:
    """Start an epoch of ``loader``: at its beginning, or where ``position`` left it. The generators'
    states as its iterator starts (for the next checkpoint), the iterator, and the batches skipped.

    A resumed epoch goes back to the states at its start, so that the iterator draws the same order
    and workers' seeds; loads the batches done (so workers stay in step); then goes to the states at
    the checkpoint before the next batch is loaded."""
    if position is not None and position.batches_done and position.epoch_start_rng is not None:
        restore_rng_state(position.epoch_start_rng, generators)
    elif position is not None:
        restore_rng_state(position.rng, generators)
    epoch_start = capture_rng_state(generators)
    iterator = iter(loader)
    skipped = 0
    if position is not None and position.batches_done:
        for _ in range(position.batches_done):
            if next(iterator, _END) is _END:
                break
            skipped += 1
        restore_rng_state(position.rng, generators)
    return epoch_start, iterator, skipped


class Loop:
    """A run's position in its loop: which epoch, how many of its batches are done."""

    def __init__(self, resume: Checkpoint | None, checkpoint_every: int, save: Callable[[Checkpoint], None],
                 steps_done: Callable[[], int]) -> None:
        self._resume = resume
        self._checkpoint_every = checkpoint_every
        self._save = save
        self._steps_done = steps_done
        self._resumed = resume is None  # whether the checkpoint's position is reached
        self.epoch = resume.epoch if resume is not None else 0
        self.batch_in_epoch = resume.batch_in_epoch if resume is not None else 0
        self._epoch_start_rng: dict[str, Any] | None = None
        self._generators: dict[str, torch.Generator] = {}
        self._last_saved = resume.step if resume is not None else 0

    def epochs(self, first: int, stop: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               scheduler: Any = None) -> Iterator[int]:
        """``range(first, stop)``, or in a resumed run from the checkpoint's epoch, with the model,
        optimizer and scheduler put back as the checkpoint holds them."""
        start = first
        if self._resume is not None:
            resume = self._resume
            model.load_state_dict(resume.model)
            if optimizer is not None and resume.optimizer is not None:
                optimizer.load_state_dict(resume.optimizer)
            if scheduler is not None and resume.scheduler is not None:
                scheduler.load_state_dict(resume.scheduler)
            start = resume.epoch
        for epoch in range(start, stop):
            self.epoch = epoch
            yield epoch

    def batches(self, loader: Iterable[Any], epoch: int | None = None) -> Iterator[tuple[int, Any]]:
        """``enumerate(loader)``, or in the epoch a resumed run starts in, from the batch after its
        checkpoint, with every generator where the whole run had it."""
        if epoch is not None:
            self.epoch = epoch
        generator = getattr(loader, "generator", None)
        self._generators = {"loader": generator} if isinstance(generator, torch.Generator) else {}
        position = None
        if not self._resumed:
            self._resumed, resume = True, self._resume
            if resume is not None:
                if resume.batch_in_epoch and EPOCH_START_RNG not in resume.extra:
                    raise CheckpointError(f"the checkpoint at step {resume.step} is {resume.batch_in_epoch} batches "
                                          "into its epoch but lacks the generators' states at its start: save it "
                                          "with run.checkpoint_if_due")
                position = EpochPosition(resume.extra.get(EPOCH_START_RNG), resume.batch_in_epoch, resume.rng)
        self._epoch_start_rng, iterator, skipped = enter_epoch(loader, self._generators, position)
        self.batch_in_epoch = skipped
        for index, batch in enumerate(iterator, start=skipped):
            self.batch_in_epoch = index + 1  # this batch is done once the loop body asks
            yield index, batch

    def checkpoint_if_due(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                          scheduler: Any = None, extra: dict[str, Any] | None = None) -> bool:
        """Save a checkpoint if ``checkpoint_every`` steps are done since the run's start; call it
        once a step, after ``log_loss``. Whether it saved one."""
        step = self._steps_done()
        if not self._checkpoint_every or step % self._checkpoint_every or step == self._last_saved:
            return False
        self._last_saved = step
        self._save(Checkpoint(
            step=step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, model=model.state_dict(),
            optimizer=optimizer.state_dict() if optimizer is not None else None,
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            rng=capture_rng_state(self._generators),
            extra={**(extra or {}), EPOCH_START_RNG: self._epoch_start_rng or capture_rng_state(self._generators)},
        ))
        return True

