"""A LightningModule trained under mlrepro: the Trainer, its loop and its checkpoints are Lightning's;
the record, the exact losses, the fingerprints and the resume are mlrepro's.

    python train.py epochs=3 accumulate=2        # or: mlflow run . --env-manager local -P accumulate=2

Three lines join them: ``MlreproCallback(run)`` in the Trainer's callbacks, ``resumable(loader)`` for
the training loader (Lightning resumes mid-epoch only from a stateful one), and
``ckpt_path=callback.ckpt_path`` (a ``resume_from`` run's checkpoint, else None).
``mlflow_logger(run)`` puts Lightning's own logging into the same MLflow run.
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
from pydantic import Field
from torch.utils.data import DataLoader, TensorDataset

import mlrepro
from mlrepro.lightning import MlreproCallback, mlflow_logger, resumable


class LitSpec(mlrepro.BaseSpec):
    """A small MLP with dropout in a LightningModule, on noisy data drawn from the seed."""

    job: Literal["lightning-mlp"] = "lightning-mlp"
    epochs: int = Field(3, ge=1, description="passes over the 256 samples")
    batch_size: int = Field(16, ge=1, description="samples a micro-batch")
    accumulate: int = Field(1, ge=1, description="micro-batches an optimizer step (accumulate_grad_batches)")
    lr: float = Field(0.05, gt=0, description="SGD learning rate")
    num_workers: mlrepro.LoaderWorkers = Field(0, ge=0, description="DataLoader worker processes")


class LitMLP(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(32, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.net(inputs), targets)
        self.log("loss", loss)  # Lightning's own logging: into the same MLflow run, as lightning/loss
        return loss

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.9)}


def train(spec: LitSpec, run: mlrepro.TrackedRun) -> None:
    inputs = torch.randn(256, 8)
    targets = inputs.sum(dim=1, keepdim=True) + 0.1 * torch.randn(256, 1)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=spec.batch_size, shuffle=True,
                        num_workers=spec.num_workers, generator=mlrepro.make_generator(spec.seed))
    model = LitMLP(spec.lr)
    callback = MlreproCallback(run)
    trainer = pl.Trainer(
        max_epochs=spec.epochs, accumulate_grad_batches=spec.accumulate, callbacks=[callback],
        logger=mlflow_logger(run), log_every_n_steps=1, deterministic=spec.deterministic,
        accelerator="cpu" if run.device.type == "cpu" else "gpu", devices=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, resumable(loader), ckpt_path=callback.ckpt_path)


if __name__ == "__main__":
    mlrepro.job_main(LitSpec, train)
