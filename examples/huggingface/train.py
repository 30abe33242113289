"""A tiny BERT trained with the Hugging Face Trainer under mlrepro: the Trainer, its loop, its
checkpoints and its MLflow logging are Hugging Face's; the record, the exact losses, the fingerprints
and the resume are mlrepro's.

    python train.py epochs=3 accumulate=2        # or: mlflow run . --env-manager local -P accumulate=2

Three lines join them: ``MlreproCallback(run)`` in the Trainer's callbacks, ``seed=spec.seed`` in its
arguments (the Trainer seeds every generator with its own seed), and
``resume_from_checkpoint=callback.resume_from_checkpoint`` (a ``resume_from`` run's checkpoint, else None).
With ``report_to=["mlflow"]`` the Trainer's own logging goes into the same MLflow run.
"""

from __future__ import annotations

import tempfile
from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

import mlrepro
from mlrepro.transformers import MlreproCallback


class BertSpec(mlrepro.BaseSpec):
    """A two-layer BERT from scratch, classifying sequences of random tokens drawn from the seed."""

    job: Literal["huggingface-bert"] = "huggingface-bert"
    epochs: int = Field(3, ge=1, description="passes over the 128 sequences")
    batch_size: int = Field(8, ge=1, description="sequences a micro-batch (per_device_train_batch_size)")
    accumulate: int = Field(1, ge=1, description="micro-batches an optimizer step (gradient_accumulation_steps)")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate, decayed linearly to 0")
    num_workers: mlrepro.LoaderWorkers = Field(0, ge=0, description="DataLoader worker processes (dataloader_num_workers)")


class Sequences(Dataset):
    """Token sequences labelled by whether token 7 appears in them."""

    def __init__(self, count: int, length: int, vocab: int) -> None:
        self.tokens = torch.randint(1, vocab, (count, length))
        self.labels = (self.tokens == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.labels[index]}


def tiny_bert() -> BertForSequenceClassification:
    """Two layers of two heads, 32 wide, its weights drawn from the seeded generators."""
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def train(spec: BertSpec, run: mlrepro.TrackedRun) -> None:
    data = Sequences(count=128, length=16, vocab=64)
    model = tiny_bert()
    callback = MlreproCallback(run)
    with tempfile.TemporaryDirectory(prefix="bert-") as output_dir:  # the checkpoints are kept in the run
        args = TrainingArguments(
            output_dir=output_dir, seed=spec.seed, full_determinism=spec.deterministic,
            num_train_epochs=spec.epochs, per_device_train_batch_size=spec.batch_size,
            gradient_accumulation_steps=spec.accumulate, learning_rate=spec.lr, logging_steps=4,
            dataloader_num_workers=spec.num_workers, save_strategy="no", report_to=["mlflow"],
            use_cpu=run.device.type == "cpu", disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)


if __name__ == "__main__":
    mlrepro.job_main(BertSpec, train)
