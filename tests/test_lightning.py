"""PyTorch Lightning under mlrepro (examples/lightning, mlrepro.lightning): the exact loss of every
optimizer step, fingerprints taken inside Lightning's closure, checkpoints Lightning itself resumes
from mid-epoch, and Lightning's own MLflow logging in the same run, with no clash."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlrepro import load_run, start_run
from mlrepro.cli.main import main
from mlrepro.lightning import MlreproCallback, resumable
from mlrepro.training.watch import Watch
from projects.linefit.spec import LineFitSpec
from tests.conftest import (
    REPO,
    job_env,
    jobs_two_at_once,
    kill_after_checkpoints,
    run_command,
    run_here,
)
from tests.helpers.planting import planted_copy, planted_line

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
    watched = load_run(run.run_id).fingerprints

    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.05, momentum=0.9)
    watch = Watch(by_hand, every=1, first_step=0)
    for _ in range(2):
        for inputs, targets in DataLoader(data(), batch_size=4):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(by_hand(inputs), targets).backward()
            watch.step()  # after backward, before the update
            optimizer.step()
    hand = watch.record()
    assert watched is not None and watched.steps.tolist() == hand.steps.tolist() == list(range(8))
    # The LightningModule's parameters are its net's, under "net.": the same tensors, the same bits.
    assert [name.removeprefix("net.") for name in watched.names] == list(hand.names)
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


def lightning_runs(store: str, cwd: Path, *words_of_each: list[str], script: Path = LIGHTNING, **env: str) -> list[str]:
    """The example (or ``script``) in a process a run, two at once; their run ids."""
    return jobs_two_at_once(store, cwd, [[sys.executable, str(script), *words] for words in words_of_each], **env)


@pytest.mark.e2e
def test_a_lightning_job_gets_every_guarantee(tmp_path: Path, store: str) -> None:
    words = ["epochs=5", "accumulate=2", "num_workers=2", "checkpoint_every=5"]  # 8 steps an epoch
    # SIGKILL mid-epoch (after a checkpoint: one every 5 steps), then resume: the whole run, bit for bit.
    # First, while the killed job's run is the store's only one.
    job = subprocess.Popen([sys.executable, str(LIGHTNING), *words], cwd=tmp_path,
                           env=job_env(store, PYTHONHASHSEED="0"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    killed = kill_after_checkpoints(store, job, at_least=1)
    resumed, whole = lightning_runs(store, tmp_path, [*words, f"resume_from={killed}"], words)
    verdict = run_here(main, "compare", resumed, whole)
    assert verdict.exit_code == 0 and "logged the same 40 losses, bit for bit" in verdict.stdout, verdict.stdout

    # Two fresh runs compare identical, bit for bit; another seed is named as the cause.
    again, other_seed = lightning_runs(store, tmp_path, words, [*words, "seed=4"])
    assert "logged the same 40 losses, bit for bit" in run_here(main, "compare", whole, again).stdout
    different = json.loads(run_here(main, "compare", "--json", whole, other_seed).stdout)
    assert different["diagnosis"].startswith("most likely cause: seed (3 | 4)")

    # One MLflow run holds mlrepro's record and Lightning's own logging: one series a metric.
    client = mlflow.MlflowClient()
    run = client.get_run(whole)
    assert [m.step for m in client.get_metric_history(whole, "loss")] == list(range(40))
    assert len(client.get_metric_history(whole, "lightning/loss")) == 40  # self.log, kept each optimizer step
    assert run.data.params["lr"] == "0.05" and run.data.params["accumulate"] == "2"
    assert run.data.tags["mlrepro.environment.determinism.deterministic_algorithms"] == "true"

    # bisect names the step and the line of an unseeded op planted from step 7.
    script = planted_copy(LIGHTNING, tmp_path / "planted", "import mlrepro\n", [
        ("self.net(inputs), targets)", "planted(self.global_step, self.net(inputs)), targets)")])
    noisy = {"PLANT_NOISE_FROM": "7"}
    # Every checkpoint kept: the replays start from Lightning's own checkpoint at step 5.
    planted_words = [*words[:2], *words[3:], "keep_checkpoints=0"]
    a, b = lightning_runs(store, tmp_path, planted_words, planted_words, script=script, **noisy)
    bisected = run_command([sys.executable, "-m", "mlrepro", "bisect", "--json", a, b], store, tmp_path, **noisy)
    assert bisected.returncode == 1, bisected.stderr[-3000:]
    found = json.loads(bisected.stdout)
    assert (found["first_divergent_step"], found["checkpoint_step"]) == (7, 5)
    assert found["difference"]["phase"] == "op"
    assert found["difference"]["location"] == f"{script}:{planted_line(script)} in planted"

    # mlrepro check: fresh runs agree, a resume mid-epoch agrees, a broken one is caught.
    checked = run_command([sys.executable, "-m", "mlrepro", "check", "--json", str(LIGHTNING), "accumulate=2",
                           "--steps", "12", "--resume-at", "5"], store, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]
    assert json.loads(checked.stdout)["passed"] is True
