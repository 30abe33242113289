"""Reading a run's artifacts as mlrepro's own reads, quietly."""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.tracking import MlflowClient

_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def download(client: MlflowClient, run_id: str, artifact: str, folder: Path) -> Path:
    """One of a run's artifacts into ``folder``, without MLflow's progress bar: it draws one for
    every download where tqdm is installed, and mlrepro's own reads of a run's small records are not
    downloads the user asked for (a compare drew 24 of them)."""
    saved = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        return Path(client.download_artifacts(run_id, artifact, str(folder)))
    finally:
        if saved is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = saved
