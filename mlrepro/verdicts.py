"""Verdicts of ``compare --log`` kept on the runs themselves, where the MLflow UI shows them.

Each compared run gets a tag ``mlrepro.verdict.<other run id>`` with the verdict
and a plot artifact ``mlrepro/compare/<other run id>.png``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlrepro import keys
from mlrepro.compare import LoggedRun, RunComparison
from mlrepro.errors import TrackingError, describe_store_failure


def verdict_text(comparison: RunComparison) -> str:
    """The verdict in a few words, for a tag the UI shows in full."""
    if comparison.identical:
        return f"identical bit for bit ({comparison.losses.steps_in_both} steps)"
    cause = comparison.differences[0].key if comparison.differences else "nothing recorded differs"
    return f"different from step {comparison.first_divergent_step} (likely cause: {cause})"


def record_comparison(
    comparison: RunComparison, a: LoggedRun, b: LoggedRun, client: MlflowClient | None = None
) -> None:
    """Tag each run with the verdict against the other and attach the plot to both."""
    from mlrepro.plotting import plot_comparison  # matplotlib only when a plot is made

    client = client or MlflowClient()
    text = verdict_text(comparison)
    try:
        with tempfile.TemporaryDirectory() as folder:
            # One picture, filed on each run under the other run's id.
            plot_for_a = plot_comparison(a.losses, b.losses, comparison, Path(folder) / f"{b.run_id}.png")
            plot_for_b = shutil.copy(plot_for_a, Path(folder) / f"{a.run_id}.png")
            for this, other, plot in ((a, b, plot_for_a), (b, a, plot_for_b)):
                client.set_tag(this.run_id, keys.TAG_VERDICT_PREFIX + other.run_id, text)
                client.log_artifact(this.run_id, str(plot), artifact_path=keys.COMPARE_ARTIFACT_DIR)
    except (MlflowException, OSError) as err:
        raise TrackingError(describe_store_failure(client.tracking_uri, err)) from err


def verdicts_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Other run id -> verdict, for every comparison recorded on a run."""
    prefix = keys.TAG_VERDICT_PREFIX
    return {key[len(prefix):]: value for key, value in tags.items() if key.startswith(prefix)}
