"""mlrepro: bit-for-bit repeatable PyTorch training runs, tracked and proven with MLflow.

    import mlrepro
    spec = mlrepro.LineFitSpec(seed=3)
    with mlrepro.start_run(spec) as run:      # seeded, switches set, recorded
        ...; run.log_loss(loss)                # every step, as metric `loss`
    mlrepro.compare_runs(run_a_id, run_b_id)   # bitwise verdict and likely causes

Names are imported on first use: MLflow loads ``mlrepro.plugin`` while it is
itself being imported, so this package must not import MLflow (or torch) then.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "mlrepro.cli": ["job_main"],
    "mlrepro.checkpoint": ["Checkpoint", "capture_rng_state", "restore_rng_state"],
    "mlrepro.code": ["CodeRecord"],
    "mlrepro.compare": ["LoggedRun", "LossComparison", "RunComparison", "compare_logged_runs", "compare_losses"],
    "mlrepro.losses": ["LossSeries"],
    "mlrepro.environment": ["EnvironmentRecord", "capture_environment"],
    "mlrepro.errors": [
        "CheckpointError", "DatasetError", "DeviceError", "ExperimentNotFoundError", "MlreproError", "NoLossesError",
        "ReproductionError", "RunNotFoundError", "SpecError", "TrackingError",
    ],
    "mlrepro.runs": ["RunSummary", "compare_runs", "find_runs", "load_run"],
    "mlrepro.verdicts": ["record_comparison"],
    "mlrepro.reproduce": ["Reproduction", "reproduce_run"],
    "mlrepro.seeding": ["DeterminismState", "SeedRecord", "make_generator", "seed_everything", "seed_worker"],
    "mlrepro.spec": [
        "BaseSpec", "Cifar10Spec", "LineFitSpec", "LoggedSpec", "build_spec", "parse_spec", "read_spec_file",
        "register_job", "registered_jobs",
    ],
    "mlrepro.tracking": ["TrackedRun", "start_run"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'mlrepro' has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from mlrepro.checkpoint import Checkpoint, capture_rng_state, restore_rng_state
    from mlrepro.cli import job_main
    from mlrepro.code import CodeRecord
    from mlrepro.compare import LoggedRun, LossComparison, RunComparison, compare_logged_runs, compare_losses
    from mlrepro.losses import LossSeries
    from mlrepro.environment import EnvironmentRecord, capture_environment
    from mlrepro.errors import (
        CheckpointError, DatasetError, DeviceError, ExperimentNotFoundError, MlreproError, NoLossesError, ReproductionError,
        RunNotFoundError, SpecError,
        TrackingError,
    )
    from mlrepro.runs import RunSummary, compare_runs, find_runs, load_run
    from mlrepro.verdicts import record_comparison
    from mlrepro.reproduce import Reproduction, reproduce_run
    from mlrepro.seeding import DeterminismState, SeedRecord, make_generator, seed_everything, seed_worker
    from mlrepro.spec import (
        BaseSpec, Cifar10Spec, LineFitSpec, LoggedSpec, build_spec, parse_spec, read_spec_file, register_job,
        registered_jobs,
    )
    from mlrepro.tracking import TrackedRun, start_run
