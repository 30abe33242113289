"""Bitwise comparison of loss sequences, and the side-by-side of specs and environments."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from mlrepro.analysis.compare import compare_logged_runs, compare_losses
from mlrepro.capture.fingerprints import FingerprintRecord
from mlrepro.capture.logged import LoggedRun
from mlrepro.capture.losses import LossSeries


def series(values, steps=None) -> LossSeries:
    values = list(values)
    return LossSeries.from_steps_and_values(range(len(values)) if steps is None else steps, values)


def nan_with_payload(payload: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000000 | payload))[0]


def test_equal_sequences_are_identical() -> None:
    verdict = compare_losses(series([3.0, 2.5, 1.25]), series([3.0, 2.5, 1.25]))
    assert verdict.identical and verdict.first_divergent_step is None and verdict.divergent_steps == 0
    assert verdict.steps_in_both == 3


def test_a_difference_in_the_last_bit_is_found_at_its_step() -> None:
    a = [1.0, 0.5, 0.25, 0.125]
    b = list(a)
    b[2] = float(np.nextafter(0.25, 1.0))
    verdict = compare_losses(series(a), series(b))
    assert not verdict.identical
    assert verdict.first_divergent_step == 2 and verdict.divergent_steps == 1
    assert (verdict.value_a, verdict.value_b) == (0.25, b[2])


def test_nan_equals_nan_only_with_the_same_bits() -> None:
    assert compare_losses(series([math.nan]), series([math.nan])).identical
    assert not compare_losses(series([nan_with_payload(1)]), series([nan_with_payload(2)])).identical


def test_signed_zeros_and_infinities_compare_by_bits() -> None:
    assert not compare_losses(series([0.0]), series([-0.0])).identical
    assert compare_losses(series([math.inf]), series([math.inf])).identical
    assert not compare_losses(series([math.inf]), series([1.7976931348623157e308])).identical


def test_steps_in_only_one_run_are_a_difference() -> None:
    verdict = compare_losses(series([1.0, 2.0, 3.0, 4.0]), series([1.0, 2.0]))
    assert not verdict.identical
    assert verdict.first_divergent_step == 2 and verdict.divergent_steps == 0
    assert (verdict.value_a, verdict.value_b) == (3.0, None)
    assert (verdict.only_in_a.count, verdict.only_in_a.first, verdict.only_in_a.last) == (2, 2, 3)
    assert verdict.only_in_b.count == 0


def test_the_earliest_of_a_value_difference_and_a_missing_step_comes_first() -> None:
    verdict = compare_losses(series([1.0, 2.0, 3.0], steps=[0, 1, 2]), series([1.0, 9.0], steps=[0, 5]))
    assert verdict.first_divergent_step == 1  # step 1 is only in A; step 5 only in B
    assert verdict.only_in_a.count == 2 and verdict.only_in_b.first == 5


def test_steps_are_sorted_and_a_step_logged_twice_keeps_its_last_value() -> None:
    loaded = LossSeries.from_steps_and_values([2, 0, 1, 1], [2.0, 0.0, 1.0, 1.5])
    assert loaded.steps.tolist() == [0, 1, 2] and loaded.values.tolist() == [0.0, 1.5, 2.0]


def test_mismatched_arrays_are_refused() -> None:
    with pytest.raises(ValueError):
        LossSeries.from_steps_and_values([0, 1], [1.0])


def test_a_million_steps_compare_exactly() -> None:
    values = np.random.default_rng(0).random(1_000_000)
    other = values.copy()
    other[765_432] = np.nextafter(other[765_432], 2.0)
    assert compare_losses(series(values), series(values.copy())).identical
    assert compare_losses(series(values), series(other)).first_divergent_step == 765_432


def test_a_series_spliced_at_a_step_keeps_its_own_steps_before_it_and_the_others_from_it_on() -> None:
    killed = series([0.0, nan_with_payload(5), 2.0, 3.0])
    resumed = series([20.0, 30.0, 40.0], steps=[2, 3, 4])
    joined = killed.spliced(resumed, 2)
    assert joined.steps.tolist() == [0, 1, 2, 3, 4]
    assert joined.values.tobytes() == np.array([0.0, nan_with_payload(5), 20.0, 30.0, 40.0]).tobytes()
    assert killed.spliced(series([9.0], steps=[1]), 4).values.tobytes() == killed.values.tobytes()


def logged(run_id: str, values: list[float], status: str = "FINISHED", stored: bool = False, **extra) -> LoggedRun:
    losses = LossSeries.from_steps_and_values(range(len(values)), values, stored=stored)
    return LoggedRun(run_id=run_id, status=status, spec=None, spec_fields={"seed": "3"}, environment={},
                     losses=losses, metric="loss", loss_source="test", **extra)


def test_a_killed_prefix_of_a_finished_run_is_identical_so_far_never_nondeterminism() -> None:
    killed = logged("a", [3.0, 2.0, 1.0], status="KILLED")
    whole = logged("b", [3.0, 2.0, 1.0, 0.5, 0.25])
    verdict = compare_logged_runs(killed, whole)
    assert verdict.verdict == "identical so far" and not verdict.identical
    assert verdict.diagnosis.startswith("identical so far: A stopped at step 2 (KILLED); the 3 steps both runs have")
    assert "nondeterministic" not in verdict.diagnosis and "cause" not in verdict.diagnosis


def test_a_live_run_is_identical_so_far_and_a_real_difference_still_counts_in_an_unfinished_run() -> None:
    live = logged("a", [3.0, 2.0], status="RUNNING")
    assert compare_logged_runs(live, logged("b", [3.0, 2.0, 1.0])).verdict == "identical so far"
    differs = compare_logged_runs(logged("a", [3.0, 2.5], status="KILLED"), logged("b", [3.0, 2.0, 1.0]))
    assert differs.verdict == "different" and differs.first_divergent_step == 1

def test_a_live_run_is_said_to_be_running_and_its_missing_fingerprints_not_yet_written() -> None:
    fingerprinted = FingerprintRecord(steps=np.array([0]), values=np.array([[7]], dtype=np.uint32), names=("w",),
                                      kinds=("parameter",), module_order=())
    whole = logged("b", [3.0, 2.0, 1.0], fingerprints=fingerprinted)
    verdict = compare_logged_runs(logged("a", [3.0, 2.0], status="RUNNING", process="alive"), whole)
    assert verdict.diagnosis.startswith("identical so far: A is still running (step 1 so far); the 2 steps")
    assert verdict.notes == ["run a (A) has written no fingerprints yet: they reach the store with its exact record, "
                             "at run.flush() and at its end: compared by its losses only"]
    elsewhere = compare_logged_runs(logged("a", [3.0, 2.0], status="RUNNING"), whole)  # its process: not checkable here
    assert "A is still running on another host (step 1 so far)" in elsewhere.diagnosis
    orphan = compare_logged_runs(logged("a", [3.0, 2.0], status="RUNNING", process="gone"), whole)
    assert "A stopped at step 1 (RUNNING, its process gone" in orphan.diagnosis
    assert orphan.notes[0].startswith("run a (A) left no fingerprints: it ended RUNNING, its process gone")


def test_steps_from_the_metric_history_are_compared_as_the_store_keeps_them_and_the_verdict_says_so() -> None:
    exact = [math.inf, -math.inf, nan_with_payload(0x123), -0.0, 1.5]
    # What MLflow's metric store gives back for the same values: max-float, one NaN, +0.0.
    kept = [1.7976931348623157e308, -1.7976931348623157e308, math.nan, 0.0, 1.5]
    verdict = compare_logged_runs(logged("a", exact), logged("b", kept, stored=True))
    assert verdict.verdict == "identical"
    assert verdict.losses.steps_compared_as_stored == 5
    assert verdict.notes == ["5 steps came from MLflow's metric history, which keeps neither inf, nor NaN payloads, "
                             "nor -0.0: they were compared as the store keeps them"]
    # Between two exact records, the same values still differ bit for bit.
    assert compare_logged_runs(logged("a", exact), logged("b", kept)).verdict == "different"


def test_a_deleted_run_is_named_as_such() -> None:
    verdict = compare_logged_runs(logged("a", [1.0]), logged("b", [1.0], deleted=True))
    assert verdict.identical and verdict.notes == ["run b (B) is deleted: it is in the tracking store's trash"]


def test_two_nans_with_other_payloads_show_their_bits() -> None:
    from mlrepro.cli.formatting import format_comparison

    verdict = compare_logged_runs(logged("a", [nan_with_payload(1)]), logged("b", [nan_with_payload(2)]))
    text = format_comparison(verdict)
    assert "  A: nan  [bits 0x7ff8000000000001]" in text and "  B: nan  [bits 0x7ff8000000000002]" in text
