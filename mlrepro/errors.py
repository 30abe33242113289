"""The failures a user can cause and fix, as one small hierarchy.

Everything here is meant to be shown to a person as one line; the CLI maps the
classes to exit codes in one place (``mlrepro.cli.main``). Programming errors are
not in this hierarchy and keep their tracebacks.
"""

from __future__ import annotations

import difflib
import os
import re

from pydantic import BaseModel, ValidationError


class MlreproError(Exception):
    """Base of every user-facing mlrepro failure."""


class SpecError(MlreproError, ValueError):
    """A run spec is invalid or cannot be read: nothing was trained or logged."""


class DeviceError(MlreproError):
    """The spec asks for a device this machine does not have."""


class DatasetError(MlreproError):
    """The training data cannot be had: neither on disk nor by download."""


class CheckpointError(MlreproError):
    """A checkpoint file is missing, damaged or not one mlrepro wrote; nothing in it was run."""


class ReproductionError(MlreproError):
    """A run could not be repeated: it has no mlrepro spec, or its job failed."""


class BisectError(MlreproError):
    """Two runs cannot be replayed to where they part: no checkpoint both have before it, say."""


class RunNotFoundError(MlreproError, LookupError):
    """No run with that id exists in the tracking store."""


class ExperimentNotFoundError(MlreproError, LookupError):
    """No experiment with that name or id exists in the tracking store."""


class SameRunError(MlreproError, ValueError):
    """Two runs were asked for, and both ids name one run: a run compared with itself proves nothing."""


class NoLossesError(MlreproError):
    """The run exists but logged no per-step loss to compare."""


class DamagedRecordError(MlreproError):
    """A run's record (a tag, an artifact) is damaged or forged: it is named, and never read as a verdict."""


class TrackingError(MlreproError):
    """The tracking store could not be reached or answered with an error."""


def describe_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, joined: the field path, what is wrong, and what is allowed.

    Pydantic's own rendering spans several lines and links to its docs; users of
    a command line want ``seed: must be <= 4294967295 (got -1)`` instead.
    """
    problems, unknown = [], []
    for error in err.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "spec"
        bounds = _bounds(model, error["loc"]) if error["type"] in _RANGE_ERRORS else None
        if error["type"] == "extra_forbidden":
            unknown.append(path)
            continue
        if bounds:
            message = f"must be {bounds} (got {_shortened(error['input'])})"
        else:
            message = _OWN_WORDS.get(error["type"]) or _PYDANTIC_OPENING.sub("must ", error["msg"])
            if "input" in error and error["type"] != "missing":
                message += f" (got {_shortened(error['input'])})"
        problems.append(f"{path}: {message}")
    if unknown:
        allowed = f" (allowed: {', '.join(sorted(model.model_fields))})" if model is not None else ""
        names = ", ".join(unknown[:_MAX_NAMED]) + (f" and {len(unknown) - _MAX_NAMED} more" if len(unknown) > _MAX_NAMED else "")
        problems.append(f"{names}: unknown field{'s' if len(unknown) > 1 else ''}{_did_you_mean(unknown, model)}{allowed}")
    return "; ".join(problems)


def _did_you_mean(unknown: list[str], model: type[BaseModel] | None) -> str:
    """``; did you mean seed?`` for a near miss (``sed``), one guess a field; nothing without one."""
    if model is None:
        return ""
    guesses = [f"{match[0]} for {name}" if len(unknown) > 1 else match[0]
               for name in unknown[:_MAX_NAMED] if (match := difflib.get_close_matches(name, model.model_fields, n=1))]
    return f"; did you mean {', '.join(guesses)}?" if guesses else ""


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
# mlrepro's words for pydantic's commonest complaints; the rest keep pydantic's text, reworded
# from "Input should be ..." to "must be ...", so every message speaks with one voice.
_OWN_WORDS = {
    "missing": "missing",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
}
_PYDANTIC_OPENING = re.compile(r"^(Input|String|Value) should ")
_MAX_SHOWN = 80
_MAX_NAMED = 10


def _shortened(value: object) -> str:
    """A bad value as the user gave it, cut short: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _bounds(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str | None:
    """A field's whole allowed range, e.g. ``from 0 to 4294967295``: pydantic names only the bound crossed."""
    if model is None or len(loc) != 1 or loc[0] not in model.model_fields:
        return None
    limits = {
        name: getattr(constraint, name)
        for constraint in model.model_fields[str(loc[0])].metadata
        for name in ("ge", "gt", "le", "lt")
        if hasattr(constraint, name)
    }
    if "ge" in limits and "le" in limits:
        return f"from {limits['ge']} to {limits['le']}"
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    return " and ".join(f"{words[name]} {value}" for name, value in limits.items()) or None


MAX_MESSAGE = 2000


def one_line(text: str) -> str:
    """A message as the one bounded line a terminal and a tag can hold, whatever was put into it."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def first_line(err: BaseException) -> str:
    """The first line of an error's text: MLflow's errors carry whole server responses."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def redacted_uri(uri: str) -> str:
    """A URI without the credentials it may carry (``http://user:secret@host`` -> ``http://host``)."""
    return redacted(uri)


# user:password@ in any URL (tracking URIs, database URLs, artifact stores), anywhere in a text.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s'\"]+@")
# Environment variables whose values are secrets by their names.
_SECRET_NAME = re.compile(r"(_TOKEN|_PASSWORD|_KEY)$|SECRET|^AWS_|^MLFLOW_TRACKING_(PASSWORD|TOKEN|USERNAME)$")
_SHORTEST_SECRET = 4  # shorter values ("1", "true") would blank out ordinary text


def redacted(text: str) -> str:
    """``text`` with URL credentials removed and the value of every secret-named environment
    variable replaced by ``***``: what mlrepro prints, tags or logs passes through here."""
    text = _CREDENTIALS.sub(r"\1", text)
    for name, value in os.environ.items():
        if len(value) >= _SHORTEST_SECRET and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    return text
