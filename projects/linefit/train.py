"""The seed's line-fit loop, unchanged in every operation that touches the numbers.

With seed 3 on the CPU its losses equal, bit for bit, those of the seed's own
script after ``torch.manual_seed(3)``: the model is built first thing after
seeding, so it draws the same initial weights, and the update is the same
manual gradient step.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from mlrepro.training.checkpoint import Checkpoint, capture_rng_state, restore_rng_state
from mlrepro.training.runs import TrackedRun
from projects.linefit.spec import LineFitSpec

PRINT_EVERY = 100


def train(spec: LineFitSpec, run: TrackedRun) -> None:
    device = run.device
    print("Device:", device)
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0]], device=device)
    y = torch.tensor([[0.0], [10.0], [20.0], [30.0], [40.0], [50.0], [60.0], [70.0]], device=device)
    model = torch.nn.Sequential(
        torch.nn.Linear(1, spec.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(spec.hidden, 1),
    )
    model.to(device)
    loss_fn = torch.nn.MSELoss(reduction="sum")

    run.log_dataset(TensorDataset(x, y), name="line")  # the points it fits, by their digest
    # fingerprints of the targets, the weights and the gradients, every spec.fingerprint_every steps
    run.watch(model, loss=loss_fn)

    start = 0
    if run.resume is not None:  # built as a fresh run would be, then put where the checkpoint was
        model.load_state_dict(run.resume.model)
        restore_rng_state(run.resume.rng)
        start = run.resume.step

    for t in range(start, spec.steps):
        y_out = model.forward(x)
        loss = loss_fn(y_out, y)
        run.log_loss(loss)
        if t % PRINT_EVERY == PRINT_EVERY - 1:
            print(t, loss.item())
        model.zero_grad()
        loss.backward()
        run.fingerprint()  # after backward, before the update
        with torch.no_grad():
            for param in model.parameters():
                param -= spec.lr * param.grad
        if spec.checkpoint_every and (t + 1) % spec.checkpoint_every == 0:
            run.save_checkpoint(Checkpoint(
                step=t + 1, epoch=0, batch_in_epoch=t + 1, model=model.state_dict(), optimizer=None,
                rng=capture_rng_state(), extra={},
            ))
