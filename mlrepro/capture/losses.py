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
    """One value per step, sorted by step; float64 holds every float32 loss exactly.

    ``stored`` marks the steps read back from MLflow's metric history rather than the
    exact record: the metric store keeps neither inf (it stores +-max-float), nor a
    NaN's sign and payload, nor -0.0, so those steps are only as exact as the store.
    """

    steps: np.ndarray
    values: np.ndarray
    stored: np.ndarray | None = None  # bool per step; None: every step is exact

    @classmethod
    def from_steps_and_values(cls, steps: object, values: object, stored: bool | object = False) -> LossSeries:
        """Sort by step; where a step was logged twice, the last value logged wins.
        ``stored`` says (for all steps, or step by step) which came from the metric history."""
        steps_array = np.asarray(steps, dtype=np.int64)
        values_array = np.asarray(values, dtype=np.float64)
        if steps_array.shape != values_array.shape or steps_array.ndim != 1:
            raise ValueError("steps and values must be 1-d arrays of the same length")
        stored_array = np.broadcast_to(np.asarray(stored, dtype=bool), steps_array.shape)
        order = np.argsort(steps_array, kind="stable")
        steps_array, values_array, stored_array = steps_array[order], values_array[order], stored_array[order]
        last_of_each = np.append(steps_array[1:] != steps_array[:-1], True) if len(steps_array) else []
        stored_array = stored_array[last_of_each]
        return cls(steps=steps_array[last_of_each], values=values_array[last_of_each],
                   stored=stored_array if stored_array.any() else None)

    @property
    def stored_mask(self) -> np.ndarray:
        """Which steps came from the metric history, as a bool array."""
        return self.stored if self.stored is not None else np.zeros(len(self.steps), dtype=bool)

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
            np.concatenate([self.stored_mask[before], later.stored_mask[after]]),
        )

    def as_stored(self) -> LossSeries:
        """The values as MLflow's metric store keeps them: what an exact value can be compared
        with when the other side only has the store's copy."""
        return LossSeries(steps=self.steps, values=as_the_store_keeps(self.values), stored=self.stored)

    @property
    def digest(self) -> str:
        """A hash of the exact steps and bits: equal digests mean identical sequences."""
        content = hashlib.sha256(self.steps.astype("<i8").tobytes())
        content.update(self.values.astype("<f8").tobytes())
        return content.hexdigest()[:16]


_MAX = np.finfo(np.float64).max


def as_the_store_keeps(values: np.ndarray) -> np.ndarray:
    """inf as +-max-float, every NaN as the one NaN, -0.0 as 0.0: MLflow's metric store."""
    kept = np.where(np.isposinf(values), _MAX, np.where(np.isneginf(values), -_MAX, values))
    kept = np.where(np.isnan(kept), np.float64("nan"), kept)
    return kept + 0.0  # -0.0 + 0.0 is +0.0; every other value is unchanged
