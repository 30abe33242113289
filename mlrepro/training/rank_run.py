"""The run's handle on every rank of torchrun but rank 0, which owns the run."""

from __future__ import annotations

from typing import Any

import torch

from mlrepro.capture.seed_record import SeedRecord
from mlrepro.capture.spec import BaseSpec
from mlrepro.training import distributed
from mlrepro.training.checkpoint import Checkpoint
from mlrepro.training.runs import _LoopMethods


class RankRun(_LoopMethods):
    """What a training loop on a rank other than 0 holds under torchrun: the run's id, the spec, and
    its own losses, which it hands to rank 0 as rank 0 gathers them. It creates no run and writes
    nothing to the store: rank 0 owns the run."""

    def __init__(self, run_id: str, spec: BaseSpec, device: torch.device, seed_record: SeedRecord,
                 world: distributed.World, resume: Checkpoint | None = None) -> None:
        self.run_id, self.spec, self.device, self.seed_record, self.world = run_id, spec, device, seed_record, world
        self.resume = resume
        self.first_step = resume.step if resume is not None else 0
        self._pending: list[float] = []
        self._steps = 0

    def _steps_done(self) -> int:
        return self.first_step + self._steps

    def log_model(self, model: torch.nn.Module, name: str = "model") -> None:
        """Rank 0 logs the model: after DDP's all-reduce every rank holds the same weights."""

    def log_loss(self, loss: float | torch.Tensor) -> None:
        self._steps += 1
        self._pending.append(loss.item() if isinstance(loss, torch.Tensor) else float(loss))
        if len(self._pending) == distributed.GATHER_EVERY:
            self.flush()

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Rank 0 logs the run's metrics."""

    def watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
              loss: torch.nn.Module | None = None) -> None:
        """Rank 0 fingerprints: after DDP's all-reduce every rank holds the same gradients and weights."""

    def fingerprint(self) -> None:
        """Rank 0 fingerprints."""

    def log_dataset(self, source: Any, name: str | None = None, digest: str | None = None, context: str = "train") -> None:
        """Rank 0 records the data: every rank reads the same dataset, each its own shard."""

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Rank 0 saves the checkpoint; this rank hands over its losses and its generators' states."""
        self.flush()
        distributed.gather_objects_on_rank_0(distributed.rank_state(checkpoint.rng, checkpoint.extra))

    def flush(self) -> None:
        if self._pending:
            distributed.gather_on_rank_0(self._pending)
            self._pending = []
