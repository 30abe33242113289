"""A spec on a command line: an optional YAML/JSON file, with ``field=value`` words on top."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlrepro.capture.spec import parse_assignments, read_spec_file


def spec_values(spec_file: str | None, assignments: Sequence[str]) -> dict[str, Any]:
    """The fields of an optional YAML/JSON spec file, with ``field=value`` words on top."""
    values: dict[str, Any] = dict(read_spec_file(spec_file)) if spec_file else {}
    values.update(parse_assignments(as_assignments(assignments)))
    return values


def as_assignments(words: Sequence[str]) -> list[str]:
    """``field=value`` words, with ``--field value`` and ``--field=value`` read the same way:
    ``mlflow run`` passes a parameter its MLproject does not declare (``-P sed=4``) as ``--sed 4``,
    and that deserves the same "unknown field" line as ``sed=4``."""
    assignments, rest = [], list(words)
    while rest:
        word = rest.pop(0)
        if word.startswith("--") and len(word) > 2:
            name, sep, value = word[2:].partition("=")
            if not sep:
                value = rest.pop(0) if rest and not rest[0].startswith("--") else ""
            word = f"{name}={value}"
        assignments.append(word)
    return assignments
