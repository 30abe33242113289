"""A run's exact loss record (``mlrepro/losses.npz``) read back: anyone who can log a run can write
it, so its arrays are checked to make one record before compare sees them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mlrepro.capture.fingerprints import KINDS, FingerprintRecord
from mlrepro.capture.losses import LossSeries
from mlrepro.errors import DamagedRecordError, one_line
from mlrepro.store import keys


def read_loss_record(path: Path) -> tuple[LossSeries, FingerprintRecord | None]:
    """The exact losses, and the fingerprints where the run took them; a record whose arrays do not
    make one (steps that are not strictly increasing integers, lengths or names that disagree) is
    ``DamagedRecordError``, never read as a verdict."""
    try:
        with np.load(path, allow_pickle=False) as exact:
            arrays = {name: exact[name] for name in exact.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise DamagedRecordError(f"{keys.LOSSES_ARTIFACT} is damaged ({err.__class__.__name__})") from err
    try:
        steps, values = _steps(arrays["steps"], "steps"), arrays["values"]
        if values.dtype.kind != "f" or values.shape != steps.shape:
            raise ValueError("values are not one float a step")
        losses = LossSeries.from_steps_and_values(steps, values)
        if "fingerprints" not in arrays:
            return losses, None
        fingerprint_steps, table = _steps(arrays["fingerprint_steps"], "fingerprint steps"), arrays["fingerprints"]
        names, kinds = _texts(arrays["fingerprint_names"]), _texts(arrays["fingerprint_kinds"])
        if table.dtype.kind not in "iu" or table.shape != (len(fingerprint_steps), len(names)) or len(kinds) != len(names):
            raise ValueError("fingerprints are not one row a step and one column a named tensor")
        if not set(kinds) <= set(KINDS):
            raise ValueError("a fingerprint is of a kind mlrepro does not take")
        return losses, FingerprintRecord(steps=fingerprint_steps, values=table.astype(np.uint32), names=names,
                                         kinds=kinds, module_order=_texts(arrays.get("module_order", np.array([]))))
    except KeyError as err:
        raise DamagedRecordError(f"{keys.LOSSES_ARTIFACT} is damaged: it holds no {err.args[0]!r}") from err
    except ValueError as err:
        raise DamagedRecordError(f"{keys.LOSSES_ARTIFACT} is damaged: {one_line(str(err))}") from err


def _steps(array: np.ndarray, what: str) -> np.ndarray:
    """Steps as written: whole numbers from 0, strictly increasing."""
    if array.dtype.kind not in "iu" or array.ndim != 1 or (len(array) and (array[0] < 0 or (np.diff(array) <= 0).any())):
        raise ValueError(f"{what} are not strictly increasing whole numbers from 0")
    return array.astype(np.int64)


def _texts(array: np.ndarray) -> tuple[str, ...]:
    if array.ndim != 1 or (len(array) and array.dtype.kind != "U"):
        raise ValueError("names that are not text")
    return tuple(array.tolist())
