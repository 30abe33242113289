"""Where two runs' per-tensor fingerprints first part: which tensor, at which step, and in which phase of
the step (the initial weights, the batch it trained on, the forward and backward that made the
gradients, or the update). Each phase is ranked before the phases it would cause: another batch
makes other gradients, and other gradients other weights at the next step.

Pure: NumPy arrays in, a typed verdict out; the fingerprints themselves are
``mlrepro.capture.fingerprints``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from mlrepro.capture.fingerprints import (
    DATA,
    GRADIENT,
    NAMED_AT_MOST,
    PARAMETER,
    FingerprintRecord,
)

# Which part of a step computed otherwise.
Phase = Literal["initial weights", "data", "backward", "optimizer", "between fingerprints"]


class TensorComparison(BaseModel):
    """Where two runs' per-tensor fingerprints first differ, and what that says."""

    model_config = ConfigDict(frozen=True)

    identical: bool
    steps_compared: int  # fingerprinted steps both runs have
    tensors_compared: int  # tensors both runs fingerprint
    first_divergent_step: int | None
    tensor: str | None  # the first tensor, in forward order, that differs at that step
    kind: Literal["data", "parameter", "gradient"] | None
    phase: Phase | None
    explanation: str
    differing_tensors: list[str]  # "conv1.weight (gradient)", forward order, at most NAMED_AT_MOST
    differing_count: int  # how many tensors differ at that step
    previous_step_compared: int | None  # the fingerprinted step before it, where all were equal


def compare_fingerprints(a: FingerprintRecord, b: FingerprintRecord) -> TensorComparison:
    """Compare, bit for bit, the fingerprints both runs took of the same tensors at the same steps."""
    columns_b = {column: i for i, column in enumerate(b.columns)}
    shared = [(i, columns_b[column]) for i, column in enumerate(a.columns) if column in columns_b]
    common, rows_a, rows_b = np.intersect1d(a.steps, b.steps, assume_unique=True, return_indices=True)
    if not shared or not len(common):
        return TensorComparison(identical=True, steps_compared=len(common), tensors_compared=len(shared),
                                first_divergent_step=None, tensor=None, kind=None, phase=None,
                                explanation="no fingerprints of the same tensors at the same steps in both runs",
                                differing_tensors=[], differing_count=0, previous_step_compared=None)
    columns_a = np.array([i for i, _ in shared])
    differs = a.values[np.ix_(rows_a, columns_a)] != b.values[np.ix_(rows_b, [j for _, j in shared])]
    differing_rows = np.flatnonzero(differs.any(axis=1))
    if not len(differing_rows):
        return TensorComparison(identical=True, steps_compared=len(common), tensors_compared=len(shared),
                                first_divergent_step=None, tensor=None, kind=None, phase=None,
                                explanation=f"every fingerprint of {len(shared)} tensors at {len(common)} steps is the same",
                                differing_tensors=[], differing_count=0, previous_step_compared=None)
    row = int(differing_rows[0])
    step = int(common[row])
    previous = int(common[row - 1]) if row > 0 else None
    found = sorted((int(columns_a[k]) for k in np.flatnonzero(differs[row])), key=a.forward_rank)
    by_kind = {kind: [column for column in found if a.kinds[column] == kind] for kind in (DATA, PARAMETER, GRADIENT)}
    phase, first, explanation = _phase(step, previous, int(a.steps[0]), by_kind, a)
    return TensorComparison(
        identical=False, steps_compared=len(common), tensors_compared=len(shared), first_divergent_step=step,
        tensor=a.names[first], kind=a.kinds[first], phase=phase, explanation=explanation,  # type: ignore[arg-type]
        differing_tensors=[f"{a.names[c]} ({a.kinds[c]})" for c in found[:NAMED_AT_MOST]],
        differing_count=len(found), previous_step_compared=previous,
    )


def _phase(step: int, previous: int | None, first_step: int, by_kind: dict[str, list[int]],
           record: FingerprintRecord) -> tuple[Phase, int, str]:
    """Which part of training computed otherwise, from what differs first.

    The batch's fingerprints are taken before the step's forward; the weights' and gradients'
    after backward, before the update: the weights are those the step's forward used, made by the
    update of the step before. Weights that differ with every earlier fingerprint equal were
    changed by that update (or, at the first step, made otherwise), which this step's batch cannot
    have caused; with equal weights, another batch comes before the gradients it makes, and equal
    batches with a differing gradient mean forward or backward differed."""
    data, parameters, gradients = by_kind[DATA], by_kind[PARAMETER], by_kind[GRADIENT]
    batch_too = f"; the batches differ at step {step} as well" if data else ""
    if parameters:
        first = parameters[0]
        name = record.names[first]
        if previous is None and step == first_step:
            return "initial weights", first, (f"the weights differ before the first update ({name} first): "
                                              f"the model was initialised, or loaded, otherwise{batch_too}")
        if previous == step - 1:
            return "optimizer", first, (f"the batch and the gradients of step {previous} were the same, but the "
                                        f"update made other weights ({name} first): the optimizer computed otherwise")
        since = f"step {previous}" if previous is not None else "the run's first step"
        return "between fingerprints", first, (
            f"the weights differ ({name} first), and the fingerprints before were taken at {since}: a batch, a "
            f"gradient or an update in between parted first{batch_too}; fingerprint_every=1, or mlrepro bisect, "
            "says which")
    if data:
        return "data", data[0], (f"the batches differ from step {step}: the data, its order or its augmentation "
                                 "changed (the weights were the same)")
    first = gradients[0]
    same = "the weights and the batch were" if DATA in record.kinds else "the weights were"
    return "backward", first, (f"{same} the same, but the gradient of {record.names[first]} differs first: the "
                               "step's forward or backward computed otherwise")
