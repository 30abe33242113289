"""Your own job under mlrepro: a spec of your own, your own training loop, every guarantee.

    python train.py epochs=75 width=32          # or: mlflow run . --env-manager local -P width=32

It imports nothing from mlrepro's example jobs. Defining ``NoisySpec`` registers
the job ``noisy``; ``mlrepro.job_main`` gives it the command line (``--spec FILE``,
``field=value`` words, one line and exit 2 for bad input) that ``mlflow run`` and
``mlrepro reproduce`` use.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader, TensorDataset

import mlrepro


class NoisySpec(mlrepro.BaseSpec):
    """A small MLP with dropout, fitted to noisy data drawn from the seed, in shuffled mini-batches."""

    job: Literal["noisy"] = "noisy"
    epochs: int = Field(75, ge=1, description="passes over the 64 samples, 4 optimizer steps each")
    batch_size: int = Field(16, ge=1, description="samples a step")
    width: int = Field(16, ge=1, description="hidden units")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout probability: draws from the seeded RNG every step")
    lr: float = Field(0.05, gt=0, description="SGD learning rate")
    gamma: float = Field(0.99, gt=0, le=1, description="the learning rate's decay each epoch (StepLR)")
    checkpoint_every: int = Field(100, ge=0, description="log a checkpoint every N steps; 0 = never")


def train(spec: NoisySpec, run: mlrepro.TrackedRun) -> None:
    # The data and the initial weights come from the generators start_run seeded.
    x = torch.randn(64, 4)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(64, 1)
    # Its own generator, seeded from the spec: the shuffle order is the seed's, whatever else draws.
    loader = DataLoader(TensorDataset(x, y), batch_size=spec.batch_size, shuffle=True,
                        generator=mlrepro.make_generator(spec.seed))
    model = torch.nn.Sequential(
        torch.nn.Linear(4, spec.width), torch.nn.ReLU(), torch.nn.Dropout(spec.dropout), torch.nn.Linear(spec.width, 1),
    ).to(run.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=spec.gamma)
    run.watch(model, optimizer)  # per-tensor fingerprints, for compare to say which tensor parts first

    # A resumed run starts at its checkpoint's epoch and batch, with the model, optimizer, scheduler,
    # shuffle order and every generator as the killed run had them there.
    for epoch in run.epochs(0, spec.epochs, model, optimizer, scheduler):
        for _, (inputs, targets) in run.batches(loader, epoch):
            loss = torch.nn.functional.mse_loss(model(inputs.to(run.device)), targets.to(run.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log_loss(loss)
            run.checkpoint_if_due(model, optimizer, scheduler)  # every checkpoint_every steps
        scheduler.step()


if __name__ == "__main__":
    mlrepro.job_main(NoisySpec, train)
