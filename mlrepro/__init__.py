"""mlrepro: bit-for-bit repeatable PyTorch training runs, tracked and proven with MLflow.

    from typing import Literal

    import mlrepro

    class MySpec(mlrepro.BaseSpec):           # your job's fields, validated
        job: Literal["mine"] = "mine"
        width: int = 8

    with mlrepro.start_run(MySpec(seed=3)) as run:   # seeded, switches set, recorded
        ...; run.log_loss(loss)                # every step, as metric `loss`
    mlrepro.compare_runs(run_a_id, run_b_id)   # bitwise verdict and likely causes

Names are imported on first use: MLflow loads ``mlrepro.integrations.mlflow_plugin`` while it is
itself being imported, so this package must not import MLflow (or torch) then.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "mlrepro.cli.job": ["job_main"],
    "mlrepro.training.checkpoint": ["Checkpoint", "capture_rng_state", "restore_rng_state"],
    "mlrepro.capture.code": ["CodeRecord"],
    "mlrepro.capture.logged": ["LoggedRun"],
    "mlrepro.analysis.compare": ["LossComparison", "RunComparison", "compare_logged_runs", "compare_losses"],
    "mlrepro.capture.losses": ["LossSeries"],
    "mlrepro.capture.environment": ["EnvironmentRecord", "capture_environment"],
    "mlrepro.errors": [
        "CheckpointError", "DamagedRecordError", "DatasetError", "DeviceError", "ExperimentNotFoundError",
        "MlreproError", "NoLossesError", "ReproductionError", "RunNotFoundError", "SameRunError", "SpecError",
        "TrackingError",
    ],
    "mlrepro.review.runs": ["RunSummary", "compare_runs", "find_runs", "load_run"],
    "mlrepro.review.verdicts": ["record_comparison"],
    "mlrepro.replay.reproduce": ["Reproduction", "reproduce_run"],
    "mlrepro.capture.seed_record": ["DeterminismState", "SeedRecord"],
    "mlrepro.capture.seeding": ["make_generator", "seed_everything", "seed_worker"],
    "mlrepro.capture.spec": [
        "BaseSpec", "DistributedSpec", "LoaderWorkers", "LoggedSpec", "Role", "build_spec", "parse_spec", "read_spec_file",
        "register_job", "registered_jobs",
    ],
    "mlrepro.training.tracking": ["start_run"],
    "mlrepro.store.zygote": ["prestart"],
    "mlrepro.training.rank_run": ["RankRun"],
    "mlrepro.training.runs": ["RunHandle", "TrackedRun"],
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
    from mlrepro.analysis.compare import (
        LossComparison,
        RunComparison,
        compare_logged_runs,
        compare_losses,
    )
    from mlrepro.capture.code import CodeRecord
    from mlrepro.capture.environment import EnvironmentRecord, capture_environment
    from mlrepro.capture.logged import LoggedRun
    from mlrepro.capture.losses import LossSeries
    from mlrepro.capture.seed_record import DeterminismState, SeedRecord
    from mlrepro.capture.seeding import make_generator, seed_everything, seed_worker
    from mlrepro.capture.spec import (
        BaseSpec,
        DistributedSpec,
        LoaderWorkers,
        LoggedSpec,
        Role,
        build_spec,
        parse_spec,
        read_spec_file,
        register_job,
        registered_jobs,
    )
    from mlrepro.cli.job import job_main
    from mlrepro.errors import (
        CheckpointError,
        DamagedRecordError,
        DatasetError,
        DeviceError,
        ExperimentNotFoundError,
        MlreproError,
        NoLossesError,
        ReproductionError,
        RunNotFoundError,
        SameRunError,
        SpecError,
        TrackingError,
    )
    from mlrepro.replay.reproduce import Reproduction, reproduce_run
    from mlrepro.review.runs import RunSummary, compare_runs, find_runs, load_run
    from mlrepro.review.verdicts import record_comparison
    from mlrepro.store.zygote import prestart
    from mlrepro.training.checkpoint import (
        Checkpoint,
        capture_rng_state,
        restore_rng_state,
    )
    from mlrepro.training.rank_run import RankRun
    from mlrepro.training.runs import RunHandle, TrackedRun
    from mlrepro.training.tracking import start_run
