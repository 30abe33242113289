"""mlrepro: bit-for-bit repeatable PyTorch training runs, tracked and proven with MLflow.

    import mlrepro
    spec = mlrepro.LineFitSpec(seed=3)
    with mlrepro.start_run(spec) as run:      # seeded, switches set, recorded
        ...; run.log_loss(loss)                # every step, as metric `loss`
    mlrepro.compare_runs(run_a_id, run_b_id)   # bitwise verdict and likely causes
"""

from mlrepro.compare import LoggedRun, LossComparison, LossSeries, RunComparison, compare_logged_runs, compare_losses
from mlrepro.environment import EnvironmentRecord, capture_environment
from mlrepro.errors import (
    DeviceError,
    MlreproError,
    NoLossesError,
    RunNotFoundError,
    SpecError,
    TrackingError,
)
from mlrepro.runs import compare_runs, load_run
from mlrepro.seeding import DeterminismState, SeedRecord, make_generator, seed_everything, seed_worker
from mlrepro.spec import BaseSpec, LineFitSpec, build_spec, parse_spec, read_spec_file
from mlrepro.tracking import TrackedRun, start_run

__all__ = [
    "BaseSpec",
    "DeterminismState",
    "DeviceError",
    "EnvironmentRecord",
    "LineFitSpec",
    "LoggedRun",
    "LossComparison",
    "LossSeries",
    "MlreproError",
    "NoLossesError",
    "RunComparison",
    "RunNotFoundError",
    "SeedRecord",
    "SpecError",
    "TrackedRun",
    "TrackingError",
    "build_spec",
    "capture_environment",
    "compare_logged_runs",
    "compare_losses",
    "compare_runs",
    "load_run",
    "make_generator",
    "parse_spec",
    "read_spec_file",
    "seed_everything",
    "seed_worker",
    "start_run",
]
