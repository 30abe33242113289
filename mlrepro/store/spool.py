"""A run's writes kept on local disk first, and delivered to the tracking store from there.

Everything a run writes once it trains (every step's loss, the exact loss record,
checkpoints, other metrics, tags, and its final status) is appended to the run's spool
before the store sees it. A writer process delivers the spool while the run trains and
retries with backoff when the store fails, so training never waits on the store and a
store that goes away loses nothing: what is still pending when the run ends is
delivered later by ``mlrepro sync``.

One run's spool, ``<root>/<run id>/``:

- ``run.json``: the run id, its store (the URI without credentials), the loss metric and
  the first step; written once;
- ``losses.f64``: every loss value, float64, appended; value i is step ``first_step + i``;
- ``times.i64``: pairs (index, milliseconds since the epoch), appended: values from that
  index on were taken at that time. Each step keeps that timestamp however often it is
  sent, and MLflow's SQL stores drop a metric row equal to one they hold, so a batch sent
  twice (it arrived, the answer did not) is stored once;
- ``journal.jsonl``: every other write, one JSON line each, appended: an ``MlflowClient``
  method (``set_tag``, ``log_metric``, ``log_artifact``, ``set_terminated``) with its
  arguments, replayed in order. A file to upload is copied under ``files/`` first;
- ``delivered.json``: how many losses and journal lines the store holds, rewritten
  (atomically) after each delivery;
- ``lock``: held (``flock``) by whoever delivers, so two deliverers never interleave.

The spool of a run is removed once all of it is delivered. The root is
``MLREPRO_SPOOL_DIR``, else ``$XDG_STATE_HOME/mlrepro/spool`` (``~/.local/state/...``).

Nothing but the standard library is imported at the top: the training side writes the
spool without MLflow's help, and the writer process imports MLflow itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrepro.errors import MlreproError, redacted_uri

if TYPE_CHECKING:
    pass

SPOOL_DIR_ENV = "MLREPRO_SPOOL_DIR"
# How long a run that ends waits for a store that takes nothing (one that takes steps is waited for).
STORE_WAIT_ENV = "MLREPRO_STORE_WAIT_S"
DEFAULT_STORE_WAIT_S = 60.0
# Retrying a store that fails: the first wait, doubled on each failure up to the last.
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
# The most losses sent in one request: what MLflow's log_batch takes.
LOSSES_PER_DELIVERY = 1000
# The writes a journal may replay: the MlflowClient methods mlrepro uses after a run starts, and the
# removal of a checkpoint no longer kept.
REPLAYED = {"set_tag", "log_metric", "log_artifact", "set_terminated", "delete_checkpoint", "log_dataset"}
# The fields of a log_dataset line: mlrepro.capture.datasets.DatasetRecord's, as text.
DATASET_FIELDS = ("name", "digest", "source_type", "source", "context")


class SpoolError(MlreproError):
    """The local spool cannot be written or read."""


class DeliveryPendingError(MlreproError):
    """The tracking store did not take all of a run's record; the rest waits in the spool."""


def root() -> Path:
    configured = os.environ.get(SPOOL_DIR_ENV)
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mlrepro" / "spool"


def store_wait_s() -> float:
    """``MLREPRO_STORE_WAIT_S``: seconds a run that ends waits for a store that takes nothing."""
    text = os.environ.get(STORE_WAIT_ENV, "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_STORE_WAIT_S
    except ValueError as err:
        raise SpoolError(f"{STORE_WAIT_ENV} must be a number of seconds (got {text!r})") from err


def ready_root() -> Path:
    """The spool root, made (private to the user) and checked writable before a run starts."""
    folder = root()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SpoolError(f"cannot keep runs' steps in {folder} ({err.strerror or err}); "
                         f"set {SPOOL_DIR_ENV} to a writable folder") from err
    return folder


def now_ms() -> int:
    return int(time.time() * 1000)


class Spool:
    """The training side of one run's spool: append losses and journal writes.

    Its journal methods have the names and arguments of ``MlflowClient``'s, so
    ``mlrepro.store.record`` writes a run through a spool exactly as through a client.
    """

    def __init__(self, folder: Path, tracking_uri: str) -> None:
        self.folder = folder
        self.tracking_uri = tracking_uri  # what error messages name
        self._losses = os.open(folder / "losses.f64", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._times = os.open(folder / "times.i64", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._journal = os.open(folder / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.losses_appended = os.fstat(self._losses).st_size // 8
        self._entries = _count_lines(folder / "journal.jsonl")

    @classmethod
    def create(cls, run_id: str, tracking_uri: str, metric: str, first_step: int) -> Spool:
        folder = ready_root() / run_id
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            (folder / "files").mkdir(mode=0o700, exist_ok=True)
            write_json(folder / "run.json", {
                "run_id": run_id, "tracking_uri": redacted_uri(absolute_uri(tracking_uri)), "metric": metric,
                "first_step": first_step, "created_ms": now_ms(), "pid": os.getpid(),
            })
            return cls(folder, tracking_uri)
        except OSError as err:
            raise SpoolError(f"cannot write the spool {folder} ({err.strerror or err})") from err

    @property
    def descriptors(self) -> tuple[int, ...]:
        return self._losses, self._times, self._journal

    def append_losses(self, values: array) -> None:
        """Append loss values (float64), stamped with the time they were taken (to 0.1 s)."""
        if not values:
            return
        _write_all(self._times, array("q", [self.losses_appended, now_ms()]).tobytes())
        _write_all(self._losses, values.tobytes())
        self.losses_appended += len(values)

    def _append(self, method: str, *args: Any, **kwargs: Any) -> None:
        line = json.dumps({"method": method, "args": list(args), "kwargs": kwargs}) + "\n"
        _write_all(self._journal, line.encode())
        self._entries += 1

    # --- the MlflowClient methods record.py uses on a training run ---------------

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._append("set_tag", run_id, key, value)

    def log_metric(self, run_id: str, key: str, value: float, step: int | None = None) -> None:
        # float("nan") and inf do not survive JSON: their text does, and float() reads it back.
        self._append("log_metric", run_id, key, repr(float(value)), timestamp=now_ms(), step=step or 0)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        source = Path(local_path)
        kept = self.folder / "files" / f"{self._entries:06d}"
        kept.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(source, kept / source.name)
        self._append("log_artifact", run_id, str((kept / source.name).relative_to(self.folder)),
                     artifact_path=artifact_path)

    def set_terminated(self, run_id: str, status: str | None = None) -> None:
        self._append("set_terminated", run_id, status=status, end_time=now_ms())

    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """The run's checkpoint at ``step`` is no longer kept (``keep_checkpoints``): its line names
        the step only; the writer makes the artifact's name (``mlrepro.store.checkpoints``)."""
        self._append("delete_checkpoint", run_id, step)

    def log_dataset(self, run_id: str, **fields: str) -> None:
        """A dataset the run trained on (``DatasetRecord``'s fields): the writer hands it to MLflow's
        ``log_inputs``, which the UI shows."""
        self._append("log_dataset", run_id, **fields)

    def delivered(self) -> tuple[int, int]:
        """How many losses and journal lines the store holds, as the writer last said."""
        losses, writes, _ = read_delivered(self.folder / "delivered.json")
        return losses, writes

    def close(self) -> None:
        for descriptor in self.descriptors:
            try:
                os.close(descriptor)
            except OSError:
                pass


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def write_json(path: Path, content: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content))
    os.replace(temporary, path)


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def absolute_uri(uri: str) -> str:
    """A SQLite store named relative to the job's folder (``sqlite:///mlflow.db``), named so that
    ``mlrepro sync`` finds it from any folder (``sqlite:////home/me/job/mlflow.db``)."""
    scheme = "sqlite:///"
    if uri.startswith(scheme) and not uri.startswith(scheme + "/") and ":memory:" not in uri:
        return scheme + str(Path(uri[len(scheme):]).resolve())
    return uri








def warn(message: str) -> None:
    """One line on stderr, as a job's other lines."""
    print(f"mlrepro: {message}", file=sys.stderr, flush=True)


def read_delivered(path: Path) -> tuple[int, int, str | None]:
    try:
        state = json.loads(path.read_text())
        return int(state["losses"]), int(state["journal"]), state.get("failure")
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0, None
