"""Your own job under mlrepro: a spec of your own, your own training loop, every guarantee.

    python train.py steps=500 width=32          # or: mlflow run . --env-manager local -P width=32

It imports nothing from mlrepro's example jobs. Defining ``NoisySpec`` registers
the job ``noisy``; ``mlrepro.job_main`` gives it the command line (``--spec FILE``,
``field=value`` words, one line and exit 2 for bad input) that ``mlflow run`` and
``mlrepro reproduce`` use.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

import mlrepro
from mlrepro import Checkpoint, capture_rng_state, restore_rng_state


class NoisySpec(mlrepro.BaseSpec):
    """A small MLP with dropout, fitted to noisy data drawn from the seed."""

    job: Literal["noisy"] = "noisy"
    steps: int = Field(300, ge=1, description="optimizer steps, one loss logged per step")
    width: int = Field(16, ge=1, description="hidden units")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout probability: draws from the seeded RNG every step")
    lr: float = Field(0.05, gt=0, description="SGD learning rate")
    checkpoint_every: int = Field(100, ge=0, description="log a checkpoint every N steps; 0 = never")


def train(spec: NoisySpec, run: mlrepro.TrackedRun) -> None:
    # The data and the initial weights come from the generators start_run seeded.
    x = torch.randn(64, 4)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(64, 1)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, spec.width), torch.nn.ReLU(), torch.nn.Dropout(spec.dropout), torch.nn.Linear(spec.width, 1),
    ).to(run.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr)
    run.watch(model, optimizer)  # per-tensor fingerprints, for compare to say which tensor parts first
    x, y = x.to(run.device), y.to(run.device)

    start = 0
    if run.resume is not None:  # built as a fresh run is, then put where the checkpoint was
        model.load_state_dict(run.resume.model)
        optimizer.load_state_dict(run.resume.optimizer)
        restore_rng_state(run.resume.rng)  # the next dropout mask is the one the killed run would have drawn
        start = run.resume.step

    for step in range(start, spec.steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log_loss(loss)
        if spec.checkpoint_every and (step + 1) % spec.checkpoint_every == 0:
            run.save_checkpoint(Checkpoint(
                step=step + 1, epoch=0, batch_in_epoch=step + 1, model=model.state_dict(),
                optimizer=optimizer.state_dict(), rng=capture_rng_state(), extra={},
            ))


if __name__ == "__main__":
    mlrepro.job_main(NoisySpec, train)
