"""Run specs: everything that decides a training run's numbers, validated before it starts.

A spec is a frozen pydantic model. Values arrive as text (MLproject parameters,
``key=value`` words) or from a YAML/JSON file; pydantic parses both, and every
problem is reported as one line naming the field and what it accepts. A spec
that fails validation never reaches seeding, training or the tracking store.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from mlrepro.errors import SpecError, describe_validation_error

# NumPy's legacy global seeding and PYTHONHASHSEED both take 0 .. 2**32 - 1; torch
# takes more. A seed outside this range would be truncated or rejected by one of
# the generators it is fed to, so the spec refuses it up front.
MAX_SEED = 2**32 - 1

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_RUN_ID_PATTERN = re.compile(r"^[0-9a-f]*$")
# Fields that say how a run is carried out, not what it computes: a resumed run
# and the uninterrupted one are the same spec.
NOT_IN_HASH = frozenset({"checkpoint_every", "resume_from"})
_METRIC_PATTERN = re.compile(r"^[A-Za-z0-9_./\- ]{1,250}$")


def _no_bool(value: Any) -> Any:
    """Refuse ``true`` where a number is meant: pydantic would quietly read it as 1."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "must be a whole number, not a boolean")
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]


def _matching(pattern: re.Pattern[str], error_type: str, message: str) -> AfterValidator:
    """Text that must match ``pattern``; otherwise one line saying what is allowed."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise PydanticCustomError(error_type, message)
        return value

    return AfterValidator(check)


Device = Annotated[str, _matching(_DEVICE_PATTERN, "device", "must be auto, cpu, cuda or cuda:N")]
RunId = Annotated[str, _matching(_RUN_ID_PATTERN, "run_id", "must be an MLflow run id (hex digits) or empty")]
MetricName = Annotated[
    str, _matching(_METRIC_PATTERN, "metric", "must be 1-250 letters, digits, spaces or _ - . / (an MLflow metric name)")
]


class BaseSpec(BaseModel):
    """The fields every job shares: what seeds it, how deterministic it is, where it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str
    seed: Count = Field(3, ge=0, le=MAX_SEED, description="seeds Python, NumPy, torch CPU and every CUDA device")
    deterministic: bool = Field(True, description="cuDNN deterministic, benchmark off, deterministic algorithms on")
    device: Device = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    threads: Count = Field(1, ge=1, le=4096, description="torch intra-op threads on the CPU; part of the result")
    metric: MetricName = Field("loss", description="MLflow metric name for the per-step loss")
    checkpoint_every: Count = Field(0, ge=0, description="log a checkpoint every N steps; 0 = never")
    resume_from: RunId = Field("", description="run id to continue from its newest checkpoint; empty = a new run")

    @property
    def hash(self) -> str:
        """A stable content hash: the same fields and values give the same hash on any machine."""
        canonical = json.dumps(self.model_dump(mode="json", exclude=set(NOT_IN_HASH)), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_params(self) -> dict[str, str]:
        """The spec as MLflow params (strings), one per field."""
        return {name: _param_text(value) for name, value in self.model_dump(mode="json").items()}


class LineFitSpec(BaseSpec):
    """The seed's first job: one hidden layer of ReLUs fitting y = 10x with plain gradient steps."""

    job: Literal["linefit"] = "linefit"
    steps: Count = Field(1000, ge=1, le=10**9, description="gradient steps, one loss logged per step")
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="learning rate of the manual update")
    hidden: Count = Field(100, ge=1, le=1_000_000, description="units in the hidden layer")


class Cifar10Spec(BaseSpec):
    """The seed's second job: the PyTorch tutorial CNN on CIFAR-10, shuffled, with two loader workers."""

    job: Literal["cifar10"] = "cifar10"
    epochs: Count = Field(2, ge=1, le=10_000, description="passes over the training set")
    batch_size: Count = Field(4, ge=1, le=65_536, description="images per step")
    num_workers: Count = Field(2, ge=0, le=256, description="DataLoader worker processes; the losses do not depend on it")
    lr: float = Field(0.001, gt=0, allow_inf_nan=False, description="SGD learning rate")
    momentum: float = Field(0.9, ge=0, allow_inf_nan=False, description="SGD momentum")
    dataset: Literal["cifar10", "fake"] = Field("cifar10", description="cifar10, or fake: FakeData drawn from the seed")
    data_dir: str = Field("./data", min_length=1, description="where cifar-10-batches-py is, or is downloaded to")
    train_limit: Count = Field(0, ge=0, description="use only the first N training images; 0 = all")
    test_limit: Count = Field(0, ge=0, description="use only the first N test images for accuracy; 0 = all")
    checkpoint_every: Count = Field(2000, ge=0, description="log a checkpoint every N steps; 0 = never")


SPEC_TYPES: dict[str, type[BaseSpec]] = {"linefit": LineFitSpec, "cifar10": Cifar10Spec}


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, dict, list)) or value is None else str(value)


def build_spec(spec_type: type[BaseSpec], values: Mapping[str, Any]) -> BaseSpec:
    """Validate ``values`` as a ``spec_type``; a bad field becomes a one-line ``SpecError``."""
    values = dict(values)
    job = spec_type.model_fields["job"].default
    if values.get("job", job) != job:
        raise SpecError(f"job: this entry point runs {job!r}, the spec says {values['job']!r}")
    try:
        return spec_type.model_validate(values)
    except ValidationError as err:
        raise SpecError(f"invalid {job} spec: {describe_validation_error(err, spec_type)}") from err


def parse_spec(values: Mapping[str, Any]) -> BaseSpec:
    """Validate a spec whose ``job`` field says which job it is for (a spec file, a logged spec)."""
    job = values.get("job")
    if not isinstance(job, str) or job not in SPEC_TYPES:
        raise SpecError(f"job: must be one of {', '.join(sorted(SPEC_TYPES))} (got {job!r})")
    return build_spec(SPEC_TYPES[job], values)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON spec file (YAML reads both)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise SpecError(f"spec file not found: {path}") from err
    except OSError as err:
        raise SpecError(f"cannot read spec file {path}: {err.strerror}") from err
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"spec file {path} is not valid YAML or JSON{where}") from err
    if not isinstance(values, dict):
        raise SpecError(f"spec file {path} must hold a mapping of field: value, not {type(values).__name__}")
    return values


def parse_assignments(words: Sequence[str]) -> dict[str, str]:
    """``["seed=4", "lr=1e-3"]`` as a mapping; the values stay text for pydantic to parse."""
    values: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SpecError(f"expected field=value, got {word!r}")
        values[key.strip()] = value.strip()
    return values
