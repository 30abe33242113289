"""A run's per-step losses as one sorted, exact series: the value compare, digests and records share.

Pure: numpy arrays in and out, no MLflow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LossSeries:
    """One value per step, sorted by step; float64 holds every float32 loss exactly."""

    steps: np.ndarray
    values: np.ndarray

    @classmethod
    def from_steps_and_values(cls, steps: object, values: object) -> LossSeries:
        """Sort by step; where a step was logged twice, the last value logged wins."""
        steps_array = np.asarray(steps, dtype=np.int64)
        values_array = np.asarray(values, dtype=np.float64)
        if steps_array.shape != values_array.shape or steps_array.ndim != 1:
            raise ValueError("steps and values must be 1-d arrays of the same length")
        order = np.argsort(steps_array, kind="stable")
        steps_array, values_array = steps_array[order], values_array[order]
        last_of_each = np.append(steps_array[1:] != steps_array[:-1], True) if len(steps_array) else []
        return cls(steps=steps_array[last_of_each], values=values_array[last_of_each])

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        """``(step, loss)`` pairs in step order."""
        return zip(self.steps.tolist(), self.values.tolist())

    def spliced(self, later: LossSeries, at_step: int) -> LossSeries:
        """This series before ``at_step``, then ``later`` from ``at_step`` on: one run's
        record continued by another source (a resumed run, or the metric history)."""
        before, after = self.steps < at_step, later.steps >= at_step
        return LossSeries.from_steps_and_values(
            np.concatenate([self.steps[before], later.steps[after]]),
            np.concatenate([self.values[before], later.values[after]]),
        )

    @property
    def digest(self) -> str:
        """A hash of the exact steps and bits: equal digests mean identical sequences."""
        content = hashlib.sha256(self.steps.astype("<i8").tobytes())
        content.update(self.values.astype("<f8").tobytes())
        return content.hexdigest()[:16]
