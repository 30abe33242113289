"""The one policy on store failures: every error a tracking store raises is sorted here, once.

A failure is one of three kinds, and each caller acts on the kind, never on the error's text:

- **missing run**: the store answered that the run does not exist (or its id is malformed);
  reading it again will not help, and the user is told which run;
- **refused**: the store answered and refused a write (an HTTP 4xx other than 408 and 429);
  retrying sends the same refusal, so delivery stops and the spool keeps the write;
- **transient**: anything else MLflow or the OS raises talking to a store (a server that does
  not answer, a DNS failure, a 5xx, a locked database, a vanished artifact folder); worth retrying,
  and described in one line without the page of urllib3 internals MLflow gives.

MLflow is imported where an error is sorted, not at the top: the spool and the CLI's exit codes
import this module on paths that never touch a store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Protocol

from mlrepro.errors import (
    MlreproError,
    RunNotFoundError,
    TrackingError,
    first_line,
    redacted_uri,
)

# What MLflow says when the server is not there; its own message is a page of retries.
_UNREACHABLE_SIGNS = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection")
# MLflow's error codes for a run that does not exist, or an id that cannot be one.
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
# HTTP answers that refuse a request for good; 408 (timeout) and 429 (slow down) are worth a retry.
_RETRYABLE_4XX = (408, 429)


class StoreRefusedError(MlreproError):
    """The tracking store answered, and refused a write: retrying will not help."""


class Failure(Enum):
    MISSING_RUN = "missing run"
    REFUSED = "refused"
    TRANSIENT = "transient"


class _HasStore(Protocol):
    tracking_uri: str


def store_failures() -> tuple[type[BaseException], ...]:
    """The exception types a store raises: MLflow's, and the OS's (DNS, sockets, files)."""
    from mlflow.exceptions import MlflowException  # MLflow only once a store has failed

    return (MlflowException, OSError)


def kind_of(err: BaseException) -> Failure:
    """Which of the three kinds a store's error is."""
    if getattr(err, "error_code", None) in _NOT_FOUND_CODES:
        return Failure.MISSING_RUN
    status = err.get_http_status_code() if hasattr(err, "get_http_status_code") else 500
    if 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return Failure.REFUSED
    return Failure.TRANSIENT


def is_missing(err: BaseException) -> bool:
    """Whether the store answered that the run (or experiment) does not exist, or its id cannot be one."""
    return kind_of(err) is Failure.MISSING_RUN


def describe(tracking_uri: str, err: BaseException) -> str:
    """One line on a store's failure, credentials removed: "cannot reach" said plainly."""
    tracking_uri = redacted_uri(tracking_uri)
    if any(sign in str(err) for sign in _UNREACHABLE_SIGNS):
        return (f"cannot reach the tracking server at {tracking_uri}: is `mlflow server` running "
                "and MLFLOW_TRACKING_URI right?")
    return f"tracking store {tracking_uri} failed: {first_line(err)}"


@contextmanager
def store_errors(client: _HasStore, run_id: str | None = None, context: str = "") -> Iterator[None]:
    """Turn the store's failures into mlrepro's: ``RunNotFoundError`` for a missing run (when a run
    is named), else ``TrackingError``. ``context`` (``"resume_from: "``) goes before a missing run's message."""
    try:
        yield
    except Exception as err:
        if not isinstance(err, store_failures()):
            raise
        if run_id is not None and is_missing(err):
            raise RunNotFoundError(
                f"{context}no run {run_id!r} in the tracking store {redacted_uri(client.tracking_uri)}") from err
        raise TrackingError(describe(client.tracking_uri, err)) from err


@contextmanager
def refusals_named(run_id: str) -> Iterator[None]:
    """Around one write of a run's record: an answer the store will repeat (a refusal, or a run
    it no longer has) becomes ``StoreRefusedError``; a transient failure goes on, for the caller to retry."""
    try:
        yield
    except Exception as err:
        if isinstance(err, store_failures()) and kind_of(err) is not Failure.TRANSIENT:
            raise StoreRefusedError(f"the tracking store refused run {run_id}'s record: {first_line(err)}") from err
        raise
