"""PyTorch Lightning under mlrepro (examples/lightning, mlrepro.lightning): the exact loss of every
optimizer step, fingerprints taken inside Lightning's closure, checkpoints Lightning itself resumes
from mid-epoch, and Lightning's own MLflow logging in the same run, with no clash."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlrepro import load_run, start_run
from mlrepro.lightning import MlreproCallback, resumable
from mlrepro.training.watch import Watch
from projects.linefit.spec import LineFitSpec
from tests.conftest import (
    REPO,
)
from tests.helpers.framework_guarantees import (
    assert_bisect_names_the_planted_op,
    assert_check_passes,
    assert_resumes_and_repeats,
)
from tests.helpers.planting import planted_copy

LIGHTNING = REPO / "examples" / "lightning" / "train.py"


class Plain(pl.LightningModule):
    """No dropout, plain SGD, no scheduler: what a loop by hand does the same."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.micro_losses: list[torch.Tensor] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.micro_losses.append(loss.detach().clone())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def data() -> TensorDataset:
    inputs = torch.linspace(-1, 1, 64).reshape(16, 4)
    return TensorDataset(inputs, inputs.sum(dim=1, keepdim=True))


def fit(run: object, model: pl.LightningModule, accumulate: int = 1) -> None:
    trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=accumulate, callbacks=[MlreproCallback(run)],
                         logger=False, accelerator="cpu", devices=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, resumable(DataLoader(data(), batch_size=4)))


def test_gradient_fingerprints_under_lightning_equal_those_of_the_same_step_by_hand(store: str) -> None:
    torch.manual_seed(0)
    model = Plain()
    by_hand = copy.deepcopy(model.net)
    with start_run(LineFitSpec(fingerprint_every=1)) as run:
        fit(run, model)
    logged = load_run(run.run_id)
    watched = logged.fingerprints
    assert list(logged.datasets) == ["TensorDataset"]  # the callback records the data the Trainer loads

    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.05, momentum=0.9)
    watch = Watch(by_hand, every=1, first_step=0)
    for _ in range(2):
        for inputs, targets in DataLoader(data(), batch_size=4):
            watch.see_batch((inputs, targets))  # as the callback hands Lightning's batch
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(by_hand(inputs), targets).backward()
            watch.step()  # after backward, before the update
            optimizer.step()
    hand = watch.record()
    assert watched is not None and watched.steps.tolist() == hand.steps.tolist() == list(range(8))
    # The LightningModule's parameters are its net's, under "net.": the same tensors, the same bits;
    # its batches are those Lightning handed training_step.
    assert [name.removeprefix("net.") for name in watched.names] == list(hand.names)
    assert watched.names[0] == "batch.inputs" and len(set(watched.values[:, 0])) == 4  # four batches an epoch
    assert np.array_equal(watched.values, hand.values)


def test_the_loss_of_an_accumulated_optimizer_step_is_the_mean_of_its_micro_batches(store: str) -> None:
    torch.manual_seed(0)
    model = Plain()
    with start_run(LineFitSpec()) as run:
        fit(run, model, accumulate=3)  # four micro-batches an epoch: steps of 3 and of 1
    micro = model.micro_losses
    # Lightning divides each micro-batch's loss by accumulate_grad_batches; the step's is their sum.
    expected = []
    for epoch in range(2):
        batches = micro[epoch * 4:(epoch + 1) * 4]
        expected += [float(batches[0] / 3 + batches[1] / 3 + batches[2] / 3), float(batches[3] / 3)]
    assert load_run(run.run_id).losses.values.tolist() == expected


@pytest.mark.e2e
def test_a_lightning_job_gets_every_guarantee(tmp_path: Path, store: str) -> None:
    # 8 steps an epoch; SIGKILL mid-epoch (after a checkpoint: one every 5 steps), then resume.
    words = ["epochs=5", "accumulate=2", "num_workers=2", "checkpoint_every=5"]
    whole = assert_resumes_and_repeats(store, tmp_path, LIGHTNING, words, steps=40)

    # One MLflow run holds mlrepro's record and Lightning's own logging: one series a metric.
    client = mlflow.MlflowClient()
    run = client.get_run(whole)
    assert [m.step for m in client.get_metric_history(whole, "loss")] == list(range(40))
    assert len(client.get_metric_history(whole, "lightning/loss")) == 40  # self.log, kept each optimizer step
    assert run.data.params["lr"] == "0.05" and run.data.params["accumulate"] == "2"
    assert run.data.tags["mlrepro.environment.determinism.deterministic_algorithms"] == "true"

    # bisect names the step and the line of an unseeded op planted from step 7, replayed from
    # Lightning's own checkpoint at step 5 (every checkpoint kept).
    script = planted_copy(LIGHTNING, tmp_path / "planted", "import mlrepro\n", [
        ("self.net(inputs), targets)", "planted(self.global_step, self.net(inputs)), targets)")])
    assert_bisect_names_the_planted_op(store, tmp_path, script, [*words[:2], *words[3:], "keep_checkpoints=0"])

    assert_check_passes(store, tmp_path, LIGHTNING)
