"""Per-tensor fingerprints of a run.

Pure: NumPy arrays; no torch, no MLflow. Where two runs' fingerprints part is
``mlrepro.analysis.tensors``'s question. Taking the
fingerprints on the device is ``mlrepro.training.watch``'s job, storing them
``mlrepro.store.record``'s (beside the losses, in the exact record).

At each fingerprinted step a run keeps one 32-bit fingerprint of the batch (the model's
inputs, and the loss function's targets where it is watched), taken before the forward, and of
every parameter and every gradient, taken after backward and before the optimizer step: the
parameters the step's forward used, and the gradients it made. Comparing them says more than
the losses can: whether the batches parted (the data, its order or its augmentation), which
tensor parted first, whether the gradients parted (forward or backward computed otherwise) or
only the weights (the update computed otherwise), and that the weights differ while the losses
are still the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARAMETER = "parameter"
GRADIENT = "gradient"
# The batch a step trains on, before its forward: the model's inputs (``batch.inputs``), and the
# loss function's targets where it is watched (``batch.targets``).
DATA = "data"
BATCH_INPUTS, BATCH_TARGETS = "batch.inputs", "batch.targets"
KINDS = (DATA, PARAMETER, GRADIENT)
# At most this many differing tensors are named in a comparison; the count says the rest.
NAMED_AT_MOST = 20


@dataclass(frozen=True)
class FingerprintRecord:
    """A run's fingerprints: one row a fingerprinted step, one column a tensor.

    ``names`` and ``kinds`` describe the columns (``conv1.weight``, ``parameter``);
    ``module_order`` lists the modules in the order the first forward called them,
    so that a difference is reported at the first module the data passed through.
    """

    steps: np.ndarray  # int64 [S], increasing
    values: np.ndarray  # uint32 [S, T]
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    module_order: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def columns(self) -> list[tuple[str, str]]:
        return list(zip(self.names, self.kinds))

    def spliced(self, later: FingerprintRecord, at_step: int) -> FingerprintRecord:
        """This record's rows before ``at_step``, then ``later``'s from ``at_step`` on: a resumed
        run continued from a checkpoint. Only where both hold the same tensors; else ``later``."""
        if later.columns != self.columns:
            return later
        before, after = self.steps < at_step, later.steps >= at_step
        return FingerprintRecord(np.concatenate([self.steps[before], later.steps[after]]),
                                 np.concatenate([self.values[before], later.values[after]]),
                                 later.names, later.kinds, later.module_order or self.module_order)

    def forward_rank(self, column: int) -> tuple[int, int, int]:
        """Where a tensor comes in the forward pass: the batch first, then its module's place in
        ``module_order`` (modules the forward never called last), then its place among the module's
        tensors, parameters before gradients."""
        if self.kinds[column] == DATA:
            return -1, column, 0
        module = self.names[column].rpartition(".")[0]
        order = {name: i for i, name in enumerate(self.module_order)}
        place = order.get(module, len(order))
        return place, self.names.index(self.names[column]), 0 if self.kinds[column] == PARAMETER else 1


