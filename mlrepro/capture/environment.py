"""What a run ran on, as a registry of tiny collectors (after Sacred's ``host_info``).

Each collector gathers one fact as text, never changes process state (no CUDA
context is created just to read a GPU's name) and never raises: a fact it cannot
read is reported as ``unavailable``. Environment variables come from an
allow-list, so secrets in the environment never reach the tracking store.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import warnings
from collections.abc import Callable, Mapping
from importlib import metadata

import torch
from pydantic import BaseModel, ConfigDict

from mlrepro.capture.facts import Source, keys_from
from mlrepro.capture.seeding import read_determinism_state

UNAVAILABLE = "unavailable"
UNSET = "unset"

Collector = Callable[[], str]
COLLECTORS: dict[str, Collector] = {}


def collector(name: str) -> Callable[[Collector], Collector]:
    """Register a function as the collector of the fact ``name``."""

    def register(function: Collector) -> Collector:
        COLLECTORS[name] = function
        return function

    return register


class EnvironmentRecord(BaseModel):
    """Facts about the machine, the software and the switches, keyed by dotted names."""

    model_config = ConfigDict(frozen=True)

    facts: dict[str, str]

    @property
    def hash(self) -> str:
        """A stable hash of all facts: equal hashes mean nothing recorded differs."""
        canonical = json.dumps(self.facts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def capture_environment(extra: Mapping[str, str] | None = None) -> EnvironmentRecord:
    """Run every collector; ``extra`` adds facts only the caller knows: the device a run used,
    and the code it ran (``mlrepro.capture.code.CodeRecord.facts``)."""
    facts = {name: _collect(function) for name, function in COLLECTORS.items()}
    facts.update(extra or {})
    return EnvironmentRecord(facts=dict(sorted(facts.items())))


def _collect(function: Collector) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = function()
    except Exception:  # a collector must never break a run; the fact is just unknown
        return UNAVAILABLE
    return UNAVAILABLE if value is None or value == "" else str(value)


def _run(*command: str) -> str | None:
    """stdout of a short command, or None when it is missing or fails."""
    if shutil.which(command[0]) is None:
        return None
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


# --- software -----------------------------------------------------------------


@collector("python.version")
def _python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


@collector("os.platform")
def _os_platform() -> str:
    return platform.platform()


def _package_version(distribution: str) -> Collector:
    return lambda: metadata.version(distribution)


for _key in keys_from(Source.PACKAGE):  # torch.version, numpy.version, ...
    collector(_key)(_package_version(_key.removesuffix(".version")))


# --- hardware -----------------------------------------------------------------


@collector("cpu.model")
def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@collector("cpu.count")
def _cpu_count() -> str | None:
    count = os.cpu_count()
    return None if count is None else str(count)


@collector("cuda.available")
def _cuda_available() -> str:
    return str(torch.cuda.is_available()).lower()


@collector("cuda.version")
def _cuda_version() -> str | None:
    return torch.version.cuda  # the CUDA torch was built with; None on CPU builds


@collector("cudnn.version")
def _cudnn_version() -> str | None:
    version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return None if version is None else str(version)


def _gpu_query(field: str) -> str | None:
    """GPU facts, one per device. torch's own queries would create a CUDA context,
    which must not happen as a side effect of recording (it would come before
    CUBLAS_WORKSPACE_CONFIG, or before DataLoader workers fork), so a process
    without one asks nvidia-smi instead."""
    if torch.cuda.is_initialized():
        devices = range(torch.cuda.device_count())
        if field == "name":
            return ", ".join(torch.cuda.get_device_name(i) for i in devices)
        if field == "compute_cap":
            return ", ".join("%d.%d" % torch.cuda.get_device_capability(i) for i in devices)
        return None
    output = _run("nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader")
    return None if output is None else ", ".join(line.strip() for line in output.splitlines())


@collector("gpu.name")
def _gpu_name() -> str | None:
    return _gpu_query("name")


@collector("gpu.capability")
def _gpu_capability() -> str | None:
    return _gpu_query("compute_cap")


@collector("gpu.driver")
def _gpu_driver() -> str | None:
    output = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    return None if output is None else output.splitlines()[0].strip()


# --- determinism switches and threads ----------------------------------------


def _switch(field: str) -> Collector:
    def read() -> str:
        value = getattr(read_determinism_state(), field)
        return UNSET if value is None else json.dumps(value).strip('"')

    return read


# The state's two variables (CUBLAS_WORKSPACE_CONFIG, PYTHONHASHSEED) are recorded once, with the
# other variables below.
for _key in keys_from(Source.SWITCH):
    collector(_key)(_switch(_key.removeprefix("determinism.")))


# --- environment variables (allow-list) --------------------------------------


def _variable(name: str) -> Collector:
    return lambda: os.environ.get(name, UNSET)


# Only the variables declared in mlrepro.capture.facts are read: secrets never reach the store.
for _key in keys_from(Source.VARIABLE):
    collector(_key)(_variable(_key.removeprefix("env.")))
