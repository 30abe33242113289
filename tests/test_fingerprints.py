"""Where two runs' fingerprints part: the step, the first tensor in forward order, and which phase.

The rules are checked on records made here; one test starts the planted job in two processes
and checks that compare names a one-ulp change, also while the losses are still the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlrepro.fingerprints import GRADIENT, PARAMETER, FingerprintRecord, compare_fingerprints
from tests.conftest import mlrepro_cli, run_planted

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


# --- across processes -----------------------------------------------------------------


def planted(store: str, cwd: Path, **env: str) -> str:
    return run_planted(store, cwd, "fingerprint_every=1", "checkpoint_every=0", **env)


def test_compare_names_the_step_and_tensor_of_a_one_ulp_change_while_the_losses_still_agree(
        tmp_path: Path, store: str) -> None:
    plain = planted(store, tmp_path)
    moved = planted(store, tmp_path, PLANT_ULP="25:head.bias")
    result = mlrepro_cli(store, tmp_path, "compare", "--json", plain, moved)
    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout)
    tensors = verdict["tensors"]
    assert (tensors["first_divergent_step"], tensors["tensor"], tensors["kind"]) == (25, "head.bias", "parameter")
    assert verdict["first_divergent_step"] == 25 and verdict["verdict"] == "different"
    # The change came after step 25's loss: the losses agree there, and for as long as one ulp takes to show.
    assert verdict["losses"]["first_divergent_step"] is None or verdict["losses"]["first_divergent_step"] > 25
    text = mlrepro_cli(store, tmp_path, "compare", plain, moved).stdout
    assert "head.bias (parameter)" in text.splitlines()[0] and "step 25" in text.splitlines()[0]


def test_weights_that_differ_under_identical_losses_are_said_plainly_and_recorded(tmp_path: Path, store: str) -> None:
    plain = planted(store, tmp_path)
    last = planted(store, tmp_path, PLANT_ULP="39:conv.weight")  # the last step: no loss comes after it
    result = mlrepro_cli(store, tmp_path, "compare", "--log", plain, last)
    assert result.returncode == 1, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == (f"different: runs {plain} and {last} logged the same 40 losses, bit for bit, but their weights "
                     "differ from step 39: conv.weight (parameter)")
    assert "the losses are identical, but the weights are not" in result.stdout
    tags = __import__("mlflow").MlflowClient(store).get_run(plain).data.tags
    assert tags[f"mlrepro.verdict.{last}"].startswith(
        "different from step 39: first tensor conv.weight (parameter, optimizer) at step 39; "
        "the losses agree, the weights do not")
