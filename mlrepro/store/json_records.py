"""A run's JSON records (``spec.json``, ``seeding.json``, ``environment.json``, ``code.json``) read back.

Anyone who can log a run can write them: each is checked against the model that wrote it, and a
record that fails is ``DamagedRecordError`` naming the run and the part, never read as a verdict.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlrepro.capture.seed_record import SeedRecord
from mlrepro.capture.spec import AnySpec, read_logged_spec
from mlrepro.errors import DamagedRecordError, describe_validation_error
from mlrepro.store import keys

_Record = TypeVar("_Record", bound=BaseModel)


@contextmanager
def damage_named(run_id: str) -> Iterator[None]:
    """A damaged part of a run's record is named with the run it belongs to."""
    try:
        yield
    except DamagedRecordError as err:
        raise DamagedRecordError(f"run {run_id}: {err}") from err


def read_json(files: Mapping[str, Path], artifact: str) -> Any:
    try:
        return json.loads(files[artifact].read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DamagedRecordError(f"{artifact} is damaged: not JSON ({err.__class__.__name__})") from err


def read_model(files: Mapping[str, Path], artifact: str, model: type[_Record]) -> _Record:
    """A JSON artifact checked against the model that wrote it."""
    try:
        return model.model_validate(read_json(files, artifact))
    except ValidationError as err:
        raise DamagedRecordError(f"{artifact} is damaged: {describe_validation_error(err)}") from err


def read_seeding(files: Mapping[str, Path], spec: AnySpec | None) -> SeedRecord:
    """What seeding did; it seeded with the spec's own seed, or the record is not one run's."""
    seeding = read_model(files, keys.SEED_ARTIFACT, SeedRecord)
    spec_seed = spec.model_dump().get("seed") if spec is not None else None
    if spec_seed is not None and spec_seed != seeding.seed:
        raise DamagedRecordError(f"{keys.SEED_ARTIFACT} is damaged: it seeded with {seeding.seed}, "
                                 f"the spec says seed={spec_seed}")
    return seeding


def read_environment(files: Mapping[str, Path]) -> dict[str, str]:
    """The environment record: one text a fact, as mlrepro writes it."""
    content = read_json(files, keys.ENVIRONMENT_ARTIFACT)
    if not isinstance(content, dict) or not all(isinstance(key, str) and isinstance(value, str)
                                                for key, value in content.items()):
        raise DamagedRecordError(f"{keys.ENVIRONMENT_ARTIFACT} is damaged: not a mapping of fact: text")
    return content


def read_spec(files: Mapping[str, Path], tags: Mapping[str, str]) -> AnySpec:
    return read_logged_spec(read_json(files, keys.SPEC_ARTIFACT), tags.get(keys.TAG_SPEC_CLASS),
                            tags.get(keys.TAG_SPEC_HASH))
