"""Run specs: everything that decides a training run's numbers, validated before it starts.

A spec is a frozen pydantic model. Values arrive as text (MLproject parameters,
``key=value`` words) or from a YAML/JSON file; pydantic parses both, and every
problem is reported as one line naming the field and what it accepts. A spec
that fails validation never reaches seeding, training or the tracking store.

Any job is a subclass of ``BaseSpec`` that names itself in its ``job`` field::

    class MySpec(mlrepro.BaseSpec):
        job: Literal["mine"] = "mine"
        width: int = 8

Defining the class registers the job; nothing in mlrepro is edited. A logged spec
reads back typed where its job is registered in the reading process, and as a
``LoggedSpec`` (job, fields, hash) where it is not: compare, show and find never
need to import a user's training code.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from mlrepro.capture.facts import (
    BUCKETS_EXPLAINED,
    THREADS_EXPLAINED,
    WORLD_EXPLAINED,
    Category,
)
from mlrepro.errors import DamagedRecordError, SpecError, describe_validation_error

# NumPy's legacy global seeding and PYTHONHASHSEED both take 0 .. 2**32 - 1; torch
# takes more. A seed outside this range would be truncated or rejected by one of
# the generators it is fed to, so the spec refuses it up front.
MAX_SEED = 2**32 - 1

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_RUN_ID_PATTERN = re.compile(r"^[0-9a-f]*$")
FINGERPRINT_EVERY = 10
_METRIC_PATTERN = re.compile(r"^[A-Za-z0-9_./\- ]{1,250}$")


def _no_bool(value: Any) -> Any:
    """Refuse ``true`` where a number is meant: pydantic would quietly read it as 1."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_as_number", "must be a whole number, not a boolean")
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


@dataclass(frozen=True)
class Role:
    """What a spec field is to mlrepro, beside its type: written in the field's annotation
    (``seed: Annotated[Count, Role(...)] = ...``) and read by the hash, diagnosis, resume, ``check``
    and ``bisect``. A field without one is in the hash and ranked as "a different setting"."""

    category: Category = Category.SPEC  # its rank among the causes of a difference
    explanation: str = "a different setting trains something else"
    # Says how a run is carried out, not what it computes: a resumed run and the uninterrupted one
    # are the same spec; `check` and `bisect` set it on every leg they start.
    carried_out: bool = False
    # Added after runs were logged without it: at this value (its default, what those runs did)
    # it stays out of the hash, so the runs logged before it keep their hashes.
    hashed_unless: Any = None

    def in_hash(self, value: Any) -> bool:
        return not self.carried_out and not (self.hashed_unless is not None and value == self.hashed_unless)


_DEFAULT_ROLE = Role()


def role(spec_type: type[BaseModel], name: str) -> Role:
    """The role of field ``name`` of ``spec_type``; a field it does not have plays the default role."""
    field = spec_type.model_fields.get(name)
    return next((item for item in (field.metadata if field else []) if isinstance(item, Role)), _DEFAULT_ROLE)


def carried_out_fields(spec_type: type[BaseModel]) -> list[str]:
    """The fields that say how a run is carried out (``checkpoint_every``, ``resume_from``, ...)."""
    return [name for name in spec_type.model_fields if role(spec_type, name).carried_out]

# A job that overrides checkpoint_every's default keeps its role with this type.
CheckpointEvery = Annotated[Count, Role(Category.OTHER, "checkpoints only read the state; they do not change the numbers",
                                        carried_out=True)]
# A DataLoader's worker processes: what another number of them changes, under plain PyTorch and under
# the frameworks. A job's own num_workers field takes this type to be explained so in compare.
LoaderWorkers = Annotated[Count, Role(Category.SPEC, (
    "another number of loader processes: an order drawn from a seeded generator stays, but randomness drawn inside "
    "workers (augmentation) does not, and a framework may draw or order batches otherwise (Lightning does); "
    "the batch fingerprints (data) say whether the batches differed"))]


# job name -> its spec type; filled as spec classes are defined.
_JOBS: dict[str, type[BaseSpec]] = {}


def _job_of(spec_type: type[BaseSpec]) -> str | None:
    field = spec_type.model_fields.get("job")
    if field is None:
        return None
    if isinstance(field.default, str) and field.default:
        return field.default
    if get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1:
        return str(get_args(field.annotation)[0])
    return None


def class_path(spec_type: type) -> str:
    """Where a spec class is defined, as ``module:QualName``."""
    return f"{spec_type.__module__}:{spec_type.__qualname__}"


def register_job(spec_type: type[BaseSpec]) -> type[BaseSpec]:
    """Make ``spec_type`` the spec of its job. Defining a ``BaseSpec`` subclass that declares
    ``job`` does this; call it yourself only for a class made some other way."""
    job = _job_of(spec_type)
    if not job:
        raise TypeError(f"{spec_type.__qualname__} must name its job: job: Literal['name'] = 'name'")
    existing = _JOBS.get(job)
    if existing is not None and existing is not spec_type and class_path(existing) != class_path(spec_type):
        raise TypeError(f"job {job!r} is already the job of {class_path(existing)}; give {spec_type.__qualname__} another")
    _JOBS[job] = spec_type
    return spec_type



class BaseSpec(BaseModel):
    """The fields every job shares: what seeds it, how deterministic it is, where it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str
    seed: Annotated[Count, Role(Category.SEED, "another seed draws other initial weights, dropout masks and shuffle order")] \
        = Field(3, ge=0, le=MAX_SEED, description="seeds Python, NumPy, torch CPU and every CUDA device")
    deterministic: Annotated[bool, Role(Category.DETERMINISM, "deterministic=false leaves cuDNN and torch free to "
                                                              "pick nondeterministic kernels")] \
        = Field(True, description="cuDNN deterministic, benchmark off, deterministic algorithms on")
    device: Annotated[Device, Role(Category.DEVICE, "CPU and GPU kernels compute in different orders")] \
        = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    threads: Annotated[Count, Role(Category.THREADS, THREADS_EXPLAINED)] \
        = Field(1, ge=1, le=4096, description="torch intra-op threads on the CPU; part of the result")
    metric: Annotated[MetricName, Role(Category.OTHER, "only the name the losses are logged under")] \
        = Field("loss", description="MLflow metric name for the per-step loss")
    checkpoint_every: CheckpointEvery = Field(0, ge=0, description="log a checkpoint every N steps; 0 = never")
    # Every checkpoint is the whole state (about 375 MB a run for the MNIST example at checkpoint_every=500,
    # were all kept). A resume reads the newest; bisect replays from the start where none is left early enough.
    keep_checkpoints: Annotated[Count, Role(Category.OTHER, "only how many checkpoints the store keeps",
                                            carried_out=True)] \
        = Field(3, ge=0, description="checkpoints the run keeps in the store, the newest; 0 = every one")
    resume_from: Annotated[RunId, Role(Category.OTHER, "a resumed run continues bit for bit from its checkpoint",
                                       carried_out=True)] \
        = Field("", description="run id to continue from its newest checkpoint; empty = a new run")
    # Measured (benchmarks/, 2 cores): fingerprinting every parameter and gradient takes about 0.2 ms
    # for the CIFAR-10 CNN, 5-10 % of its CPU step at every step, and 25-30 % of the line fit's
    # 0.25-ms step. Every 10 steps costs a tenth of that; compare then names the step within ten,
    # and bisect finds the exact one.
    fingerprint_every: Annotated[Count, Role(Category.OTHER, "fingerprints only read the weights and gradients; "
                                                             "they do not change the numbers", carried_out=True)] \
        = Field(FINGERPRINT_EVERY, ge=0, description=(
            "fingerprint every parameter and gradient every N steps, for compare to say where runs part; 0 = never"))

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that names its own job registers it: reading a logged run of that job
        in this process then gives this class back."""
        super().__pydantic_init_subclass__(**kwargs)
        if "job" in cls.__dict__.get("__annotations__", {}):
            register_job(cls)

    @classmethod
    def job_name(cls) -> str:
        """The job this spec type runs: its ``job`` default, or the one value its ``Literal`` allows."""
        return _job_of(cls) or ""

    @property
    def hash(self) -> str:
        """A stable content hash: the same fields and values give the same hash on any machine."""
        return spec_hash(self.model_dump(mode="json"), type(self))

    def to_params(self) -> dict[str, str]:
        """The spec as MLflow params (strings), one per field."""
        return params_of(self.model_dump(mode="json"))


class DistributedSpec(BaseSpec):
    """The fields of a job that trains on many processes with DDP. ``start_run`` checks ``nproc``
    against the world torchrun started, and records ``bucket_cap_mb`` with the process group; a
    job's command line started with ``nproc`` above 1 on one machine starts torchrun itself."""

    # Both came after runs were logged without them: at their defaults they stay out of the hash,
    # so those runs keep theirs.
    nproc: Annotated[Count, Role(Category.DISTRIBUTED, WORLD_EXPLAINED, hashed_unless=1)] = Field(
        1, ge=1, le=1024, description="DDP processes in all; above 1 on one machine the job starts torchrun, "
                                      "on many each node's torchrun starts its share")
    bucket_cap_mb: Annotated[float, Role(Category.DISTRIBUTED, BUCKETS_EXPLAINED, hashed_unless=25.0)] = Field(
        25.0, gt=0, le=65_536, allow_inf_nan=False,
        description="DDP's gradient bucket size: another size all-reduces in another order")


def spec_hash(fields: Mapping[str, Any], spec_type: type[BaseModel] | None = None) -> str:
    """The hash of a spec's JSON fields: each field in it as its role says (the roles of the fields
    every job may have, ``DistributedSpec``'s, where the class is not known)."""
    spec_type = spec_type or DistributedSpec
    content = {name: value for name, value in fields.items() if role(spec_type, name).in_hash(value)}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def params_of(fields: Mapping[str, Any]) -> dict[str, str]:
    """JSON field values as the text MLflow params hold, one per field."""
    return {name: _param_text(value) for name, value in fields.items()}


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, dict, list)) or value is None else str(value)


@dataclass(frozen=True)
class LoggedSpec:
    """A logged spec whose job is not registered in this process: its job, fields and hash, untyped.

    It answers what compare, show and find ask of a spec (``job``, ``hash``,
    ``to_params``, ``metric``) without the class, so reading a run never imports
    the code that trained it. ``typed()`` imports the class when a caller wants it.
    """

    job: str
    fields: dict[str, Any]
    spec_class: str | None = None  # "module:QualName" of the class that logged it
    logged_hash: str | None = None  # the hash the run was tagged with, by its own class

    @property
    def hash(self) -> str:
        """The hash its own class gave it; computed with ``BaseSpec``'s roles for a record without one."""
        return self.logged_hash or spec_hash(self.fields)

    @property
    def metric(self) -> str:
        return str(self.fields.get("metric", "loss"))

    def to_params(self) -> dict[str, str]:
        return params_of(self.fields)

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return dict(self.fields)

    def typed(self) -> BaseSpec:
        """The spec as its own class: registered in this process, or imported from ``spec_class``."""
        if self.job not in _JOBS and self.spec_class:
            module, _, _ = self.spec_class.partition(":")
            try:
                import_module(module)
            except Exception as err:  # the user's module, with whatever it imports
                raise SpecError(f"job {self.job!r}: cannot import {module} ({type(err).__name__}: {err})") from err
        return parse_spec(self.fields)


AnySpec = BaseSpec | LoggedSpec

def registered_jobs() -> dict[str, type[BaseSpec]]:
    """Every job this process knows, by name: the built-in ones and every spec class defined so far."""
    return dict(_JOBS)


def build_spec(spec_type: type[BaseSpec], values: Mapping[str, Any]) -> BaseSpec:
    """Validate ``values`` as a ``spec_type``; a bad field becomes a one-line ``SpecError``."""
    values = dict(values)
    job = spec_type.job_name()
    if values.get("job") is None:
        values["job"] = job
    if values["job"] != job:
        raise SpecError(f"job: this entry point runs {job!r}, the spec says {values['job']!r}")
    try:
        return spec_type.model_validate(values)
    except ValidationError as err:
        raise SpecError(f"invalid {job} spec: {describe_validation_error(err, spec_type)}") from err


def parse_spec(values: Mapping[str, Any]) -> BaseSpec:
    """Validate a spec whose ``job`` field says which job it is for (a spec file, a logged spec)."""
    job = values.get("job")
    if job is None:
        raise SpecError(f"job: missing (one of {', '.join(sorted(_JOBS))}, or your own spec's)")
    if not isinstance(job, str) or job not in _JOBS:
        raise SpecError(f"job: must be one of {', '.join(sorted(_JOBS))} (got {job!r}); "
                        "a job of your own is known once its spec class is imported")
    return build_spec(_JOBS[job], values)


def read_logged_spec(values: Any, spec_class: str | None = None, logged_hash: str | None = None) -> AnySpec:
    """A spec as a run logged it: typed where its job is registered here and the fields still
    validate, else a ``LoggedSpec``. Never imports code; a record without a job name is damaged."""
    if not isinstance(values, dict) or not isinstance(values.get("job"), str) or not values["job"]:
        raise DamagedRecordError("the logged spec is damaged: it is not a mapping with a job name")
    shared = {name: value for name, value in values.items() if name in BaseSpec.model_fields}
    try:
        # The fields every job shares mean the same in every version: a seed that is not a
        # count is a damaged or forged record, never "another version of the class".
        BaseSpec.model_validate(shared)
    except ValidationError as err:
        raise DamagedRecordError(f"the logged spec is damaged: {describe_validation_error(err)}") from err
    spec_type = _JOBS.get(values["job"])
    if spec_type is not None:
        try:
            return spec_type.model_validate(values)
        except ValidationError:
            pass  # logged by another version of the class: still comparable as a record
    return LoggedSpec(job=values["job"], fields=dict(values), spec_class=spec_class, logged_hash=logged_hash)


# A spec file is a handful of fields: these bounds stop a hostile file (a YAML alias bomb
# expands 389 bytes into gigabytes) long before it costs memory or time.
MAX_SPEC_FILE_BYTES = 1_000_000
MAX_YAML_ALIASES = 20
# Lists and mappings inside each other: a spec's values are a few levels deep at most; 100,000
# brackets in a row would take the parser past Python's recursion limit.
MAX_SPEC_DEPTH = 20


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with duplicate keys refused, aliases counted and nesting bounded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise SpecError(f"uses more than {MAX_YAML_ALIASES} YAML aliases; a spec needs none")
        self.depth += 1
        try:
            if self.depth > MAX_SPEC_DEPTH:
                raise SpecError(f"nests lists or mappings more than {MAX_SPEC_DEPTH} deep; a spec needs a few")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                raise SpecError(f"has a key that is a {type(key).__name__}, not a name (line {key_node.start_mark.line + 1})")
            if key in seen:
                raise SpecError(f"names {str(key)[:80]!r} twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON spec file (YAML reads both): UTF-8 text, no key twice, few aliases."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise SpecError(f"spec file {path} is larger than {MAX_SPEC_FILE_BYTES} bytes: not a spec")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise SpecError(f"spec file not found: {path}") from err
    except UnicodeDecodeError as err:
        raise SpecError(f"spec file {path} is not UTF-8 text (byte {err.start})") from err
    except OSError as err:
        raise SpecError(f"cannot read spec file {path}: {err.strerror}") from err
    try:
        values = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader, bounded
    except SpecError as err:
        raise SpecError(f"spec file {path} {err}") from err
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
