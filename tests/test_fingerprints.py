"""Where two runs' fingerprints part: the step, the first tensor in forward order, and which phase.

The rules are checked on records made here, then on the session's planted runs: compare names a
one-ulp change, also while the losses are still the same."""

from __future__ import annotations

import json

import mlflow
import numpy as np

from mlrepro.analysis.tensors import compare_fingerprints
from mlrepro.capture.fingerprints import (
    BATCH_INPUTS,
    DATA,
    GRADIENT,
    PARAMETER,
    FingerprintRecord,
)
from mlrepro.cli.main import main
from tests.conftest import PlantedRuns, run_here

NAMES = ("head.weight", "conv.weight") * 2  # registered head first; the forward runs conv first
KINDS = (PARAMETER, PARAMETER, GRADIENT, GRADIENT)
ORDER = ("", "conv", "head")


def record(steps: list[int], changes: dict[tuple[int, int], int] | None = None) -> FingerprintRecord:
    values = np.arange(len(steps) * 4, dtype=np.uint32).reshape(len(steps), 4)
    for (row, column), value in (changes or {}).items():
        values[row, column] = value
    return FingerprintRecord(np.array(steps, dtype=np.int64), values, NAMES, KINDS, ORDER)


def test_equal_records_are_identical() -> None:
    verdict = compare_fingerprints(record([0, 1, 2]), record([0, 1, 2]))
    assert verdict.identical and verdict.first_divergent_step is None
    assert (verdict.steps_compared, verdict.tensors_compared) == (3, 4)


def test_a_gradient_that_differs_with_equal_weights_is_backward_named_in_forward_order() -> None:
    verdict = compare_fingerprints(record([0, 1, 2]), record([0, 1, 2], {(1, 2): 99, (1, 3): 98}))
    assert (verdict.first_divergent_step, verdict.tensor, verdict.kind, verdict.phase) == (
        1, "conv.weight", "gradient", "backward")
    assert verdict.differing_tensors == ["conv.weight (gradient)", "head.weight (gradient)"]


def test_weights_that_differ_after_equal_gradients_were_changed_by_the_update() -> None:
    verdict = compare_fingerprints(record([0, 1, 2]), record([0, 1, 2], {(2, 0): 99, (2, 2): 98}))
    assert (verdict.first_divergent_step, verdict.tensor, verdict.kind, verdict.phase) == (
        2, "head.weight", "parameter", "optimizer")
    assert verdict.previous_step_compared == 1
    assert "gradients of step 1 were the same" in verdict.explanation


def test_weights_that_differ_at_the_first_step_were_initialised_otherwise() -> None:
    verdict = compare_fingerprints(record([0, 1]), record([0, 1], {(0, 1): 7}))
    assert (verdict.tensor, verdict.phase) == ("conv.weight", "initial weights")


def test_with_gaps_between_fingerprints_the_phase_is_not_guessed() -> None:
    verdict = compare_fingerprints(record([0, 10, 20]), record([0, 10, 20], {(2, 0): 5}))
    assert (verdict.first_divergent_step, verdict.phase) == (20, "between fingerprints")
    assert "fingerprint_every=1" in verdict.explanation


def test_only_the_steps_and_tensors_both_runs_have_are_compared() -> None:
    every_step, every_other = record([0, 1, 2, 3]), record([0, 2])
    every_other.values[:] = every_step.values[[0, 2]]
    verdict = compare_fingerprints(every_step, every_other)
    assert verdict.identical and verdict.steps_compared == 2
    other_model = FingerprintRecord(np.array([0]), np.zeros((1, 1), np.uint32), ("fc.weight",), (PARAMETER,))
    assert compare_fingerprints(every_step, other_model).tensors_compared == 0


def test_a_resumed_runs_record_continues_the_one_it_resumed() -> None:
    before, after = record([0, 1, 2, 3]), record([2, 3, 4], {(0, 0): 50})
    spliced = before.spliced(after, 2)
    assert spliced.steps.tolist() == [0, 1, 2, 3, 4]
    assert spliced.values[2, 0] == 50 and spliced.values[1, 0] == before.values[1, 0]


def batched(steps: list[int], changes: dict[tuple[int, int], int] | None = None) -> FingerprintRecord:
    """``record``'s tensors after a batch column (column 0), as a run that watches its batches keeps them."""
    plain = record(steps)
    values = np.concatenate([np.full((len(steps), 1), 1000, dtype=np.uint32), plain.values], axis=1)
    for (row, column), value in (changes or {}).items():
        values[row, column] = value
    return FingerprintRecord(plain.steps, values, (BATCH_INPUTS, *NAMES), (DATA, *KINDS), ORDER)


def test_other_batches_with_equal_weights_are_the_data_ranked_before_the_gradients_they_make() -> None:
    verdict = compare_fingerprints(batched([0, 1, 2]), batched([0, 1, 2], {(1, 0): 7, (1, 3): 99, (1, 4): 98}))
    assert (verdict.first_divergent_step, verdict.tensor, verdict.kind, verdict.phase) == (1, "batch.inputs", "data", "data")
    assert verdict.explanation.startswith("the batches differ from step 1: the data, its order or its augmentation")
    assert verdict.differing_tensors[0] == "batch.inputs (data)"
    # From the first step (a loader shuffled by an unseeded generator): still the data, not a gradient.
    assert compare_fingerprints(batched([0, 1]), batched([0, 1], {(0, 0): 7, (0, 3): 9})).phase == "data"


def test_weights_made_by_the_update_before_come_before_this_steps_batch() -> None:
    """The weights a step starts from were made by the step before; its batch cannot have caused them."""
    verdict = compare_fingerprints(batched([0, 1, 2]), batched([0, 1, 2], {(2, 0): 7, (2, 1): 99}))
    assert (verdict.phase, verdict.tensor) == ("optimizer", "head.weight")
    first = compare_fingerprints(batched([0, 1]), batched([0, 1], {(0, 0): 7, (0, 2): 9}))
    assert first.phase == "initial weights" and first.explanation.endswith("the batches differ at step 0 as well")


# --- on the session's planted runs -----------------------------------------------------------


def test_compare_names_the_step_and_tensor_of_a_one_ulp_change_while_the_losses_still_agree(
        planted_store: PlantedRuns) -> None:
    plain, moved = planted_store.plain, planted_store.ulp_at_25
    result = run_here(main, "compare", "--json", plain, moved)
    assert result.exit_code == 1, result.stderr
    verdict = json.loads(result.stdout)
    tensors = verdict["tensors"]
    assert (tensors["first_divergent_step"], tensors["tensor"], tensors["kind"]) == (25, "head.bias", "parameter")
    assert verdict["first_divergent_step"] == 25 and verdict["verdict"] == "different"
    # The change came after step 25's loss: the losses agree there, and for as long as one ulp takes to show.
    assert verdict["losses"]["first_divergent_step"] is None or verdict["losses"]["first_divergent_step"] > 25
    text = run_here(main, "compare", plain, moved).stdout
    assert "head.bias (parameter)" in text.splitlines()[0] and "step 25" in text.splitlines()[0]


def test_weights_that_differ_under_identical_losses_are_said_plainly_and_recorded(planted_store: PlantedRuns) -> None:
    plain, last = planted_store.plain, planted_store.ulp_at_39  # the last step: no loss comes after it
    result = run_here(main, "compare", "--log", plain, last)
    assert result.exit_code == 1, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == (f"different: runs {plain} and {last} logged the same 40 losses, bit for bit, but their weights "
                     "differ from step 39: conv.weight (parameter)")
    assert "the losses are identical, but the weights are not" in result.stdout
    tags = mlflow.MlflowClient().get_run(plain).data.tags
    assert tags[f"mlrepro.verdict.{last}"].startswith(
        "different from step 39: first tensor conv.weight (parameter, optimizer) at step 39; "
        "the losses agree, the weights do not")
