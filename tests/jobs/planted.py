"""A job of a user's own, with differences planted on request, for the tests of compare, bisect and check.

    python tests/jobs/planted.py steps=40 fingerprint_every=1 checkpoint_every=10

Its model is a small CNN whose middle holds a ``Noise`` layer. Three environment
variables plant what the tests look for, and do nothing when unset:

- ``PLANT_ULP=STEP:TENSOR`` moves the first value of parameter TENSOR by one ulp at step
  STEP, after that step's backward and before its update (so the step's loss is unchanged);
- ``PLANT_NOISE_FROM=STEP`` makes ``Noise`` add noise from an unseeded generator from step
  STEP on: a nondeterministic op, as a custom kernel with atomics would be;
- ``PLANT_UNSEEDED_FROM=STEP`` draws the data's order from an unseeded generator from step STEP on.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from pydantic import Field

import mlrepro
from mlrepro import Checkpoint, capture_rng_state, restore_rng_state


class PlantedSpec(mlrepro.BaseSpec):
    job: Literal["planted"] = "planted"
    steps: int = Field(40, ge=1)
    lr: float = Field(0.05, gt=0)
    checkpoint_every: int = Field(10, ge=0)


def _from_step(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


class Noise(torch.nn.Module):
    """Adds nothing, or from PLANT_NOISE_FROM's step on, noise no seed decides."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.unseeded = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = _from_step("PLANT_NOISE_FROM")
        if start is None or self.step < start:
            return x
        return x + 1e-3 * torch.randn(x.shape, generator=self.unseeded)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.noise = Noise()
        self.head = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.noise(self.conv(x))).flatten(1))


def train(spec: PlantedSpec, run: mlrepro.TrackedRun) -> None:
    images, labels = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)
    run.watch(model, optimizer)
    start = 0
    if run.resume is not None:
        model.load_state_dict(run.resume.model)
        optimizer.load_state_dict(run.resume.optimizer)
        restore_rng_state(run.resume.rng)
        start = run.resume.step
    ulp_step, _, ulp_tensor = os.environ.get("PLANT_ULP", "").partition(":")
    unseeded_from = _from_step("PLANT_UNSEEDED_FROM")
    unseeded = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    for step in range(start, spec.steps):
        model.noise.step = step
        drawn_from = unseeded if unseeded_from is not None and step >= unseeded_from else None
        batch = torch.randperm(64, generator=drawn_from)[:16]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        if ulp_step and step == int(ulp_step):
            with torch.no_grad():
                value = dict(model.named_parameters())[ulp_tensor].view(-1)
                value[0] = torch.nextafter(value[0], torch.tensor(float("inf")))
        optimizer.step()
        run.log_loss(loss)
        if spec.checkpoint_every and (step + 1) % spec.checkpoint_every == 0:
            run.save_checkpoint(Checkpoint(
                step=step + 1, epoch=0, batch_in_epoch=step + 1, model=model.state_dict(),
                optimizer=optimizer.state_dict(), rng=capture_rng_state(), extra={},
            ))


if __name__ == "__main__":
    mlrepro.job_main(PlantedSpec, train)
