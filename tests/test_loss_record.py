"""A run's exact loss record is read back only as one record: arrays that do not make one (steps that
are not strictly increasing whole numbers, lengths or names that disagree) are named damaged, with exit
2, and never read as "identical" or "different"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlrepro.cli.main import main
from mlrepro.store import keys
from tests.conftest import LineFitRuns, assert_one_line_error_here, run_here

Arrays = dict[str, np.ndarray]
NOT_STEPS = "steps are not strictly increasing whole numbers from 0"
NOT_A_TABLE = "fingerprints are not one row a step and one column a named tensor"


def replaced(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Arrays], Arrays]:
    return lambda arrays: {**arrays, name: change(arrays[name])}


@pytest.mark.parametrize(("damage", "fragment"), [
    pytest.param(replaced("steps", lambda steps: steps.astype(np.float64)), NOT_STEPS, id="steps stored as floats"),
    pytest.param(replaced("steps", lambda steps: steps[::-1].copy()), NOT_STEPS, id="steps reversed"),
    pytest.param(replaced("steps", np.zeros_like), NOT_STEPS, id="steps all zero"),
    pytest.param(replaced("steps", lambda steps: steps - 5), NOT_STEPS, id="negative steps"),
    pytest.param(replaced("values", lambda values: values[:-1]), "values are not one float a step", id="a value short"),
    pytest.param(replaced("fingerprints", lambda table: table[:, :1]), NOT_A_TABLE, id="fingerprints cut to one column"),
    pytest.param(replaced("fingerprint_names", lambda names: names[:1]), NOT_A_TABLE, id="names cut to one"),
    pytest.param(replaced("fingerprint_steps", lambda steps: steps[::-1].copy()),
                 "fingerprint steps are not strictly increasing", id="fingerprint steps reversed"),
    pytest.param(replaced("fingerprint_kinds", lambda kinds: np.array(["weights"] * len(kinds))),
                 "a fingerprint is of a kind mlrepro does not take", id="a kind of its own"),
])
def test_a_record_whose_arrays_make_no_record_is_named_damaged(linefit_store: LineFitRuns, damage, fragment: str) -> None:
    record = Path(mlflow.MlflowClient().get_run(linefit_store.same_a).info.artifact_uri) / keys.LOSSES_ARTIFACT
    with np.load(record) as exact:
        arrays = {name: exact[name] for name in exact.files}
    assert "fingerprints" in arrays and len(arrays["steps"]) == 30  # the shared runs fingerprint every 10 steps
    with record.open("wb") as file:
        np.savez(file, **damage(arrays))
    result = run_here(main, "compare", linefit_store.same_a, linefit_store.same_b)
    assert_one_line_error_here(result, f"{keys.LOSSES_ARTIFACT} is damaged: {fragment}")
