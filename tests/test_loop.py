"""Epochs and batches a resumed run enters where its checkpoint left it: a run resumed from any
checkpoint, mid-epoch or at an epoch's end, draws the same order, augmentations and dropout, and
gives the whole run's losses bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mlrepro.capture.seeding import seed_everything
from mlrepro.errors import CheckpointError
from mlrepro.training.checkpoint import Checkpoint
from mlrepro.training.loop import EPOCH_START_RNG, Loop

BATCHES_PER_EPOCH = 4


class NoisyImages(Dataset):
    """Eight items, each with an augmentation drawn from torch's global generator as it is loaded."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.full((3,), index / 8) + 0.1 * torch.randn(3)  # drawn in the main process, batch by batch
        return x, torch.tensor([float(index % 3)])


def train(epochs: int, resume: Checkpoint | None = None, checkpoint_every: int = 3,
          generator: bool = False) -> tuple[list[float], list[Checkpoint]]:
    """A loop written as the README says; its losses from the resume on, and its checkpoints."""
    seed_everything(5)
    saved: list[Checkpoint] = []
    losses: list[float] = []
    # A copy, as a checkpoint file is: state_dict() holds the live tensors the next steps change.
    loop = Loop(resume, checkpoint_every, lambda checkpoint: saved.append(copy.deepcopy(checkpoint)), lambda: (resume.step if resume else 0) + len(losses))
    # No generator of its own: the shuffle order's seed is drawn from torch's global generator.
    loader = DataLoader(NoisyImages(), batch_size=2, shuffle=True,
                        generator=torch.Generator().manual_seed(9) if generator else None)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for epoch in loop.epochs(1, epochs + 1, model, optimizer, scheduler):
        for _, (x, y) in loop.batches(loader, epoch):
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            loop.checkpoint_if_due(model, optimizer, scheduler)
        scheduler.step()
    return losses, saved


@pytest.mark.parametrize("generator", [False, True], ids=["global generator", "loader's generator"])
def test_a_run_resumed_from_any_checkpoint_gives_the_whole_runs_losses(generator: bool) -> None:
    whole, saved = train(epochs=3, generator=generator)
    assert [c.step for c in saved] == [3, 6, 9, 12]
    # Step 3 is mid-epoch 1, 6 mid-epoch 2, 12 the end of the last epoch.
    assert [(c.epoch, c.batch_in_epoch) for c in saved] == [(1, 3), (2, 2), (3, 1), (3, 4)]
    for checkpoint in saved:
        resumed, _ = train(epochs=3, resume=checkpoint, generator=generator)
        assert resumed == whole[checkpoint.step:], f"resumed at step {checkpoint.step}"


def test_the_order_is_not_what_decides_alone_the_augmentations_and_dropout_are_restored_too() -> None:
    # A check that the test above can fail: the rng at the epoch's start without the step's gives other numbers.
    whole, saved = train(epochs=2)
    checkpoint = saved[0]
    broken = Checkpoint(**{**checkpoint.__dict__, "rng": checkpoint.extra[EPOCH_START_RNG]})
    resumed, _ = train(epochs=2, resume=broken)
    assert resumed != whole[checkpoint.step:]


def test_a_checkpoint_mid_epoch_without_the_epochs_generators_is_refused() -> None:
    _, saved = train(epochs=1)
    checkpoint = Checkpoint(**{**saved[0].__dict__, "extra": {}})
    with pytest.raises(CheckpointError, match="3 batches into its epoch"):
        train(epochs=1, resume=checkpoint)


def test_checkpoints_come_every_n_steps_counted_from_the_runs_first() -> None:
    _, saved = train(epochs=2, checkpoint_every=0)
    assert saved == []
    _, saved = train(epochs=2, checkpoint_every=5)
    assert [c.step for c in saved] == [5]
