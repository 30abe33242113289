"""Property-based: whatever a user or a damaged file hands mlrepro, the answer is a correct value or one
clear line, never a traceback. Fixed seed and bounded examples (the `ci` profile in conftest.py)."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlrepro.analysis.compare import compare_losses
from mlrepro.capture.losses import LossSeries
from mlrepro.capture.spec import (
    build_spec,
    parse_spec,
    read_spec_file,
)
from mlrepro.errors import MAX_MESSAGE, MlreproError, SpecError
from mlrepro.store.loss_record import read_loss_record
from projects.cifar10.spec import Cifar10Spec
from projects.linefit.spec import LineFitSpec

FIELDS = sorted(set(LineFitSpec.model_fields) | set(Cifar10Spec.model_fields) | {"sed", "", "x" * 300})
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=300), st.binary(max_size=50).map(lambda b: b.decode("latin-1")),
    st.lists(st.integers(), max_size=5), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def assert_one_line(err: SpecError) -> None:
    text = str(err)
    assert text and "\n" not in text and len(text) <= MAX_MESSAGE + 200, text[:300]


@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8))
def test_any_spec_values_give_a_spec_or_one_line(values: dict) -> None:
    for spec_type in (LineFitSpec, Cifar10Spec):
        try:
            spec = build_spec(spec_type, values)
        except SpecError as err:
            assert_one_line(err)
        else:
            assert spec.job == spec_type.job_name() and len(spec.hash) == 16


def read_or_one_line(reader: Callable[[Path], Any], folder: Path, name: str, data: bytes) -> Any:
    """What ``reader`` makes of ``data`` written to a file, or None after checking its error is one line."""
    path = folder / name
    path.write_bytes(data)
    try:
        return reader(path)
    except MlreproError as err:  # SpecError for a spec, DamagedRecordError for a record
        assert_one_line(err)
        return None


@given(st.binary(max_size=2000))
def test_any_bytes_as_a_spec_file_give_a_mapping_or_one_line(tmp_path_factory, data: bytes) -> None:
    values = read_or_one_line(read_spec_file, tmp_path_factory.mktemp("spec"), "spec.yaml", data)
    if values is not None:
        assert isinstance(values, dict)
        try:
            parse_spec(values)
        except SpecError as err:
            assert_one_line(err)


@given(st.text(alphabet="&*[]{}:,- \nabjoblinefit0123", max_size=400))
def test_yaml_shaped_text_with_anchors_and_aliases_is_bounded(tmp_path_factory, text: str) -> None:
    read_or_one_line(read_spec_file, tmp_path_factory.mktemp("yaml"), "spec.yaml", text.encode())


@given(st.binary(max_size=3000))
def test_any_bytes_as_the_loss_record_give_losses_or_one_line(tmp_path_factory, data: bytes) -> None:
    losses = read_or_one_line(read_loss_record, tmp_path_factory.mktemp("losses"), "losses.npz", data)
    if losses is not None:
        assert len(losses.steps) == len(losses.values)


def floats_with_every_bit_pattern() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=False), st.just(-0.0), st.just(math.inf),
                     st.integers(min_value=1, max_value=2**51 - 1).map(
                         lambda payload: struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000000 | payload))[0]))


@given(st.lists(floats_with_every_bit_pattern(), max_size=40), st.lists(floats_with_every_bit_pattern(), max_size=40))
def test_compare_is_identical_exactly_when_every_bit_is_equal_and_does_not_care_about_order(a: list, b: list) -> None:
    first, second = LossSeries.from_steps_and_values(range(len(a)), a), LossSeries.from_steps_and_values(range(len(b)), b)
    verdict = compare_losses(first, second)
    same_bits = len(a) == len(b) > 0 and np.array(a, dtype=np.float64).tobytes() == np.array(b, dtype=np.float64).tobytes()
    assert verdict.identical == same_bits
    swapped = compare_losses(second, first)
    assert (swapped.identical, swapped.first_divergent_step, swapped.divergent_steps) == (
        verdict.identical, verdict.first_divergent_step, verdict.divergent_steps)
    assert compare_losses(first, first).identical == (len(a) > 0)
