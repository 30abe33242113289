"""Verdicts of ``compare --log`` kept on the runs themselves, where the MLflow UI shows them.

Each compared run gets a tag ``mlrepro.verdict.<other run id>`` with the verdict
and a plot artifact ``mlrepro/compare/<other run id>.png``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.tracking import MlflowClient

from mlrepro.analysis.compare import RunComparison
from mlrepro.capture.logged import LoggedRun
from mlrepro.store import keys, record


@dataclass(frozen=True)
class RecordedVerdict:
    """What ``record_comparison`` wrote on one run: the tag and the plot, by name."""

    run_id: str
    tag: str
    text: str
    plot: str  # the artifact path of the plot


def verdict_text(comparison: RunComparison) -> str:
    """The verdict in a few words, for a tag the UI shows in full."""
    if comparison.identical:
        return f"identical bit for bit ({comparison.losses.steps_in_both} steps)"
    if comparison.verdict == "identical so far":
        # Later steps may still differ: the tag says so, and a later compare --log replaces it.
        return f"provisional: identical so far ({comparison.losses.steps_in_both} steps; a run did not finish)"
    cause = comparison.differences[0].key if comparison.differences else "nothing recorded differs"
    tensors = comparison.tensors
    where = ""
    if tensors is not None and not tensors.identical:
        agree = "; the losses agree, the weights do not" if comparison.weights_differ_while_losses_agree else ""
        where = f": first tensor {tensors.tensor} ({tensors.kind}, {tensors.phase}) at step {tensors.first_divergent_step}{agree}"
    return f"different from step {comparison.first_divergent_step}{where} (likely cause: {cause})"


def plot_file(comparison: RunComparison, a: LoggedRun, b: LoggedRun, path: Path) -> Path:
    """The comparison's plot as a PNG at ``path``; matplotlib is imported only when one is made."""
    # matplotlib only when a plot is made
    from mlrepro.analysis.plotting import plot_comparison

    return plot_comparison(a.losses, b.losses, comparison, path)


def record_comparison(
    comparison: RunComparison, a: LoggedRun, b: LoggedRun, client: MlflowClient | None = None
) -> list[RecordedVerdict]:
    """Tag each run with the verdict against the other and attach the plot to both."""
    client = client or MlflowClient()
    text = verdict_text(comparison)
    recorded = []
    with tempfile.TemporaryDirectory() as folder:
        # One picture, filed on each run under the other run's id.
        plot_for_a = plot_file(comparison, a, b, Path(folder) / f"{b.run_id}.png")
        plot_for_b = Path(shutil.copy(plot_for_a, Path(folder) / f"{a.run_id}.png"))
        for this, other, plot in ((a, b, plot_for_a), (b, a, plot_for_b)):
            record.write_verdict(client, this.run_id, other.run_id, text, plot)
            recorded.append(RecordedVerdict(run_id=this.run_id, tag=keys.TAG_VERDICT_PREFIX + other.run_id, text=text,
                                            plot=f"{keys.COMPARE_ARTIFACT_DIR}/{plot.name}"))
    return recorded


def record_on_comparison_run(comparison: RunComparison, a: LoggedRun, b: LoggedRun) -> str | None:
    """Record the verdict on the run ``mlflow run -e compare`` opened: which runs, the verdict,
    and the plot. Returns that run's id; None outside ``mlflow run``."""
    run_id = MLFLOW_RUN_ID.get()
    if not run_id:
        return None
    client = MlflowClient()
    record.write_tags(client, run_id, {
        keys.TAG_COMPARED_A: a.run_id,
        keys.TAG_COMPARED_B: b.run_id,
        keys.TAG_COMPARED_VERDICT: verdict_text(comparison),
        keys.TAG_COMPARED_IDENTICAL: str(comparison.identical).lower(),
    })
    with tempfile.TemporaryDirectory() as folder:
        plot = plot_file(comparison, a, b, Path(folder) / f"{a.run_id}-vs-{b.run_id}.png")
        record.write_artifact(client, run_id, plot, keys.COMPARE_ARTIFACT_DIR)
    return run_id
