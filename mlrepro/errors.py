"""The failures a user can cause and fix, as one small hierarchy.

Everything here is meant to be shown to a person as one line; the CLI maps the
classes to exit codes in one place (``mlrepro.cli``). Programming errors are
not in this hierarchy and keep their tracebacks.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError


class MlreproError(Exception):
    """Base of every user-facing mlrepro failure."""


class SpecError(MlreproError, ValueError):
    """A run spec is invalid or cannot be read: nothing was trained or logged."""


class DeviceError(MlreproError):
    """The spec asks for a device this machine does not have."""


class RunNotFoundError(MlreproError, LookupError):
    """No run with that id exists in the tracking store."""


class NoLossesError(MlreproError):
    """The run exists but logged no per-step loss to compare."""


class TrackingError(MlreproError):
    """The tracking store could not be reached or answered with an error."""


def describe_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, joined: the field path, what is wrong, and what is allowed.

    Pydantic's own rendering spans several lines and links to its docs; users of
    a command line want ``seed: must be <= 4294967295 (got -1)`` instead.
    """
    problems = []
    for error in err.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "spec"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields)) if model is not None else ""
            message = f"unknown field (allowed: {allowed})" if allowed else "unknown field"
        else:
            message = error["msg"]
            if "input" in error and error["type"] != "missing":
                message += f" (got {error['input']!r})"
        problems.append(f"{path}: {message}")
    return "; ".join(problems)


def first_line(err: BaseException) -> str:
    """The first line of an error's text: MLflow's errors carry whole server responses."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
