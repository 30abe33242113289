"""A run as it was logged: what it was asked, what it ran on, what it got, and how it ended.

Plain data, read from the store by ``mlrepro.store.record`` and compared by
``mlrepro.analysis``; neither layer needs the other to hold it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlrepro.capture.code import CodeRecord
from mlrepro.capture.datasets import DatasetRecord
from mlrepro.capture.fingerprints import FingerprintRecord
from mlrepro.capture.losses import LossSeries
from mlrepro.capture.seed_record import SeedRecord
from mlrepro.capture.spec import AnySpec

# MLflow's statuses of a run that did not run to its end (SCHEDULED: not started yet).
UNFINISHED = ("RUNNING", "SCHEDULED", "KILLED", "FAILED")


@dataclass(frozen=True)
class LoggedRun:
    """A run as compare sees it: what it was asked, what it ran on, what it got, and how it ended."""

    run_id: str
    status: str
    spec: AnySpec | None  # typed where its job is registered here; None for a run not logged through mlrepro
    spec_fields: dict[str, str]
    environment: dict[str, str]
    losses: LossSeries
    metric: str
    loss_source: str  # where the losses came from: the exact artifact or the metric history
    tags: dict[str, str] = field(default_factory=dict)
    code: CodeRecord | None = None  # the code that ran and how to start it again; None before mlrepro 0.2
    fingerprints: FingerprintRecord | None = None  # per-tensor fingerprints, where the run took them
    seeding: SeedRecord | None = None  # what seeding did, where mlrepro seeded the run
    datasets: dict[str, DatasetRecord] = field(default_factory=dict)  # the data it trained on, by name
    experiment_id: str | None = None
    deleted: bool = False  # in the store's trash (MLflow's lifecycle stage "deleted")
    process: str = "unknown"  # for a RUNNING run: "alive", "gone" (killed, never ended) or "unknown"

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED

    @property
    def still_running(self) -> bool:
        """RUNNING, its process alive or on a host this one cannot check: not stopped, only unfinished."""
        return self.status == "RUNNING" and self.process != "gone"

    @property
    def data_digests(self) -> dict[str, str]:
        """Its datasets' digests under the keys compare ranks them by (``data.<name>``, ``drawn_data.<name>``)."""
        return {dataset.fact: dataset.digest for dataset in self.datasets.values()}

    @property
    def state(self) -> str:
        """How the run ended, in words: ``FINISHED``, ``KILLED``, ``RUNNING, its process gone``."""
        if self.status == "RUNNING" and self.process == "gone":
            return "RUNNING, its process gone: killed without a chance to say so"
        return self.status
