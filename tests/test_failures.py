"""The one store-failure policy: every error a store raises is a missing run, a refusal, or transient."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from mlrepro.errors import RunNotFoundError, TrackingError
from mlrepro.store.failures import (
    Failure,
    StoreRefusedError,
    describe,
    kind_of,
    refusals_named,
    store_errors,
)


class _Store:
    tracking_uri = "http://user:secret@tracking.example:5000"


@pytest.mark.parametrize(("error", "kind"), [
    (MlflowException("no run", error_code=RESOURCE_DOES_NOT_EXIST), Failure.MISSING_RUN),
    (MlflowException("bad id", error_code=INVALID_PARAMETER_VALUE), Failure.MISSING_RUN),
    (MlflowException("no", error_code=PERMISSION_DENIED), Failure.REFUSED),
    (MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED), Failure.TRANSIENT),  # 429: retry
    (MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE), Failure.TRANSIENT),
    (MlflowException("boom", error_code=INTERNAL_ERROR), Failure.TRANSIENT),
    (ConnectionRefusedError("Connection refused"), Failure.TRANSIENT),
])
def test_each_store_error_is_one_of_three_kinds(error: BaseException, kind: Failure) -> None:
    assert kind_of(error) is kind


def test_reading_turns_them_into_mlrepro_errors_without_the_credentials() -> None:
    with pytest.raises(RunNotFoundError, match="resume_from: no run 'abc' in the tracking store http://tracking"):
        with store_errors(_Store(), "abc", "resume_from: "):
            raise MlflowException("no run", error_code=RESOURCE_DOES_NOT_EXIST)
    with pytest.raises(TrackingError, match="cannot reach the tracking server at http://tracking.example:5000"):
        with store_errors(_Store()):
            raise OSError("Max retries exceeded with url: /api/2.0/mlflow/runs/get")
    with pytest.raises(KeyError):  # not a store's failure: not the policy's business
        with store_errors(_Store()):
            raise KeyError("x")
    assert "secret" not in describe(_Store.tracking_uri, OSError("Connection refused"))


def test_writing_stops_on_what_the_store_will_repeat_and_retries_the_rest() -> None:
    with pytest.raises(StoreRefusedError, match="refused run r1's record"):
        with refusals_named("r1"):
            raise MlflowException("run is deleted", error_code=INVALID_PARAMETER_VALUE)
    with pytest.raises(MlflowException):
        with refusals_named("r1"):
            raise MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)
