"""Run a logged run's spec again as a new run, and say whether it repeated bit for bit.

The job is started as MLproject starts it (``python -m projects --spec FILE``
with PYTHONHASHSEED fixed) from the project folder, so this works where
``mlflow run .`` works: in a checkout of the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlrepro import keys
from mlrepro.compare import LoggedRun, RunComparison
from mlrepro.diagnosis import Difference, differences
from mlrepro.environment import capture_environment
from mlrepro.errors import ReproductionError, TrackingError, describe_store_failure
from mlrepro.runs import compare_runs, load_run
from mlrepro.verdicts import record_comparison

# Facts a new process can be checked against before it runs; the determinism
# switches are only set once the job seeds, so they are left to compare.
_DRIFT_PREFIXES = ("git.", "python.", "os.", "torch.", "torchvision.", "numpy.", "mlflow.", "pydantic.", "mlrepro.",
                   "cpu.", "gpu.", "cuda.", "cudnn.")


@dataclass(frozen=True)
class Reproduction:
    original: LoggedRun
    new_run_id: str
    drift: list[Difference]  # what differed before the job ran: code, versions, hardware
    comparison: RunComparison


def environment_drift(logged: dict[str, str], current: dict[str, str]) -> list[Difference]:
    """Code, version and hardware facts that differ now from when the run was logged."""
    def comparable(facts: dict[str, str]) -> dict[str, str]:
        return {key: value for key, value in facts.items() if key.startswith(_DRIFT_PREFIXES)}

    return differences({}, {}, comparable(logged), comparable(current))


def reproduce_run(
    run_id: str,
    project: str | Path = ".",
    client: MlflowClient | None = None,
    on_drift: Callable[[list[Difference]], None] | None = None,
) -> Reproduction:
    """Repeat ``run_id`` from its logged spec in a new run of the same experiment, compare and record.

    ``on_drift`` hears, before the job starts, what differs in code, versions or
    hardware from when the run was logged.
    """
    client = client or MlflowClient()
    original = load_run(run_id, client)
    if original.spec is None:
        raise ReproductionError(f"run {run_id} was not logged by an mlrepro job: it has no spec to repeat")
    project = Path(project)
    if not (project / "projects" / "__main__.py").exists():
        raise ReproductionError(f"{project.resolve()} is not an mlrepro project checkout (no projects/): run from one")
    drift = environment_drift(original.environment, capture_environment().facts)
    if on_drift is not None and drift:
        on_drift(drift)
    try:
        experiment_id = client.get_run(run_id).info.experiment_id
        new_run = client.create_run(experiment_id, tags={keys.TAG_REPRODUCES: run_id})
    except (MlflowException, OSError) as err:
        raise TrackingError(describe_store_failure(client.tracking_uri, err)) from err
    new_run_id = new_run.info.run_id

    with tempfile.TemporaryDirectory() as folder:
        spec_file = Path(folder) / "spec.json"
        spec_file.write_text(json.dumps(original.spec.model_dump(mode="json")))
        # As the MLproject command: string hashing fixed at start-up, the run already created.
        env = dict(os.environ, PYTHONHASHSEED="0", MLFLOW_RUN_ID=new_run_id, MLFLOW_TRACKING_URI=client.tracking_uri)
        job = subprocess.run([sys.executable, "-m", "projects", "--spec", str(spec_file)], cwd=project, env=env,
                             check=False)
    if job.returncode != 0:
        client.set_terminated(new_run_id, status="FAILED")
        raise ReproductionError(f"the repeat of run {run_id} failed (exit {job.returncode}); see run {new_run_id}")

    repeat = load_run(new_run_id, client)
    comparison = compare_runs(original, repeat, client)
    record_comparison(comparison, original, repeat, client)
    return Reproduction(original=original, new_run_id=new_run_id, drift=drift, comparison=comparison)
