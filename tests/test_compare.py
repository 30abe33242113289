"""Bitwise comparison of loss sequences, and the side-by-side of specs and environments."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from mlrepro.compare import compare_losses
from mlrepro.losses import LossSeries


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
