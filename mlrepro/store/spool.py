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

import bisect
import json
import os
import shutil
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrepro.errors import MlreproError, redacted_uri
from mlrepro.store import failures
from mlrepro.store.failures import StoreRefusedError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

SPOOL_DIR_ENV = "MLREPRO_SPOOL_DIR"
# How long a run that ends waits for a store that takes nothing (one that takes steps is waited for).
STORE_WAIT_ENV = "MLREPRO_STORE_WAIT_S"
DEFAULT_STORE_WAIT_S = 60.0
# Retrying a store that fails: the first wait, doubled on each failure up to the last.
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
# The most losses sent in one request: what MLflow's log_batch takes.
LOSSES_PER_DELIVERY = 1000
# The writes a journal may replay: the MlflowClient methods mlrepro uses after a run starts.
_REPLAYED = {"set_tag", "log_metric", "log_artifact", "set_terminated"}


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


def _now_ms() -> int:
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
            _write_json(folder / "run.json", {
                "run_id": run_id, "tracking_uri": redacted_uri(_absolute(tracking_uri)), "metric": metric,
                "first_step": first_step, "created_ms": _now_ms(), "pid": os.getpid(),
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
        _write_all(self._times, array("q", [self.losses_appended, _now_ms()]).tobytes())
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
        self._append("log_metric", run_id, key, repr(float(value)), timestamp=_now_ms(), step=step or 0)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        source = Path(local_path)
        kept = self.folder / "files" / f"{self._entries:06d}"
        kept.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(source, kept / source.name)
        self._append("log_artifact", run_id, str((kept / source.name).relative_to(self.folder)),
                     artifact_path=artifact_path)

    def set_terminated(self, run_id: str, status: str | None = None) -> None:
        self._append("set_terminated", run_id, status=status, end_time=_now_ms())

    def delivered(self) -> tuple[int, int]:
        """How many losses and journal lines the store holds, as the writer last said."""
        losses, writes, _ = _read_delivered(self.folder / "delivered.json")
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


def _write_json(path: Path, content: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content))
    os.replace(temporary, path)


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _absolute(uri: str) -> str:
    """A SQLite store named relative to the job's folder (``sqlite:///mlflow.db``), named so that
    ``mlrepro sync`` finds it from any folder (``sqlite:////home/me/job/mlflow.db``)."""
    scheme = "sqlite:///"
    if uri.startswith(scheme) and not uri.startswith(scheme + "/") and ":memory:" not in uri:
        return scheme + str(Path(uri[len(scheme):]).resolve())
    return uri


# --- delivery ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """What of a run's spool the store does not hold yet."""

    run_id: str
    steps: int
    writes: int  # journal lines: tags, metrics, artifacts, the end
    ends_run: bool  # whether the run's final status is among them
    folder: Path
    reason: str = ""  # why the store does not hold them, where known

    @property
    def nothing(self) -> bool:
        return self.steps == 0 and self.writes == 0

    def describe(self) -> str:
        parts = []
        if self.steps:
            parts.append(f"{self.steps:,} step{'s' if self.steps != 1 else ''}")
        other = self.writes - (1 if self.ends_run else 0)
        if other:
            parts.append(f"{other} other write{'s' if other != 1 else ''}")
        if self.ends_run:
            parts.append("the run's end")
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else "nothing"

    def describe_for_user(self) -> str:
        """One line: what waits, where, why, and the command that delivers it."""
        why = f" ({self.reason})" if self.reason else ""
        return (f"the tracking store did not take all of run {self.run_id}{why}: {self.describe()} "
                f"{'wait' if self.steps != 1 or self.writes else 'waits'} in {self.folder}; "
                f"deliver them with: mlrepro sync {self.run_id}")


class Delivery:
    """Delivers one run's spool to its store, in order, from where the last delivery stopped.

    It reads only what is new in the spool's files each time, so a long run's spool is not read
    again every 0.1 s."""

    def __init__(self, folder: Path, client: MlflowClient) -> None:
        self.folder = folder
        self.client = client
        try:
            header = json.loads((folder / "run.json").read_text())
            self.run_id: str = header["run_id"]
            self.metric: str = header["metric"]
            self.first_step: int = int(header["first_step"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SpoolError(f"the spool {folder} is damaged: run.json unreadable ({err.__class__.__name__})") from err
        self.losses_delivered, self.writes_delivered, self.failure = _read_delivered(folder / "delivered.json")
        # Journal lines read so far, from the first one not delivered; and where reading goes on.
        self._lines: list[dict[str, Any]] = []
        self._lines_start = self.writes_delivered
        self._journal_offset = 0
        self._skip = self.writes_delivered  # lines delivered before this Delivery, still to be read past
        # The spooled times: the first index of each stamp, and the stamp.
        self._stamp_indexes = array("q")
        self._stamps = array("q")
        self._times_offset = 0

    def pending(self) -> Pending:
        losses = _size(self.folder / "losses.f64") // 8
        self._read_journal()
        waiting = self._lines[self.writes_delivered - self._lines_start:]
        ends = any(entry.get("method") == "set_terminated" for entry in waiting)
        return Pending(self.run_id, max(0, losses - self.losses_delivered), len(waiting), ends, self.folder,
                       self.failure or "")

    def deliver_available(self) -> None:
        """Deliver everything spooled so far: losses first, then the journal (whose lines were
        written after the losses they describe). Raises the store's error where it fails;
        what was delivered before it is counted."""
        self._read_journal()  # first: every loss a line describes is spooled before it
        total = _size(self.folder / "losses.f64") // 8
        self._read_times()
        while self.losses_delivered < total:
            start = self.losses_delivered
            timestamp, chunk_end = self._stamp_of(start, total)
            end = min(start + LOSSES_PER_DELIVERY, chunk_end)
            values = self._read_losses(start, end)
            self._call(lambda: _record().write_loss_metrics(self.client, self.run_id, self.metric, values,
                                                            self.first_step + start, timestamp))
            self.losses_delivered = end
            self._save_state()
        while self.writes_delivered - self._lines_start < len(self._lines):
            position = self.writes_delivered - self._lines_start
            batch = self._next_writes(position)
            if not _superseded(batch[0], self._lines[position + 1:]):
                self._call(lambda: self._replay(batch))
            self.writes_delivered += len(batch)
            self._save_state()
            for entry in batch:
                if entry["method"] == "log_artifact":
                    shutil.rmtree(self.folder / Path(entry["args"][1]).parent, ignore_errors=True)
        delivered = self.writes_delivered - self._lines_start
        if delivered > 1000:  # forget what is delivered, keep what is not
            del self._lines[:delivered]
            self._lines_start = self.writes_delivered

    def _next_writes(self, position: int) -> list[dict[str, Any]]:
        """The next write, or the run of metric points that follows (one request for up to 1,000)."""
        batch = [self._lines[position]]
        if batch[0]["method"] == "log_metric":
            for entry in self._lines[position + 1 : position + LOSSES_PER_DELIVERY]:
                if entry["method"] != "log_metric":
                    break
                batch.append(entry)
        return batch

    def _replay(self, batch: list[dict[str, Any]]) -> None:
        method = batch[0]["method"]
        if method not in _REPLAYED:
            raise SpoolError(f"the spool {self.folder} is damaged: unknown write {method!r}")
        if method == "log_metric":
            from mlflow.entities import Metric

            # Values are kept as text: JSON has no NaN or inf.
            metrics = [Metric(e["args"][1], float(e["args"][2]), e["kwargs"]["timestamp"], e["kwargs"]["step"])
                       for e in batch]
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            return
        args, kwargs = list(batch[0]["args"]), dict(batch[0]["kwargs"])
        if method == "log_artifact":
            args[1] = str(self.folder / args[1])
        getattr(self.client, method)(*args, **kwargs)

    def _call(self, write: Callable[[], None]) -> None:
        """One write; a refusal the store will repeat (a 4xx answer) becomes ``StoreRefusedError``."""
        with failures.refusals_named(self.run_id):
            write()

    def _read_journal(self) -> None:
        path = self.folder / "journal.jsonl"
        try:
            with open(path, "rb") as journal:
                journal.seek(self._journal_offset)
                data = journal.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._journal_offset += len(complete)
        for line in complete.splitlines():
            if self._skip:
                self._skip -= 1
                continue
            try:
                self._lines.append(json.loads(line))
            except ValueError as err:
                raise SpoolError(f"the spool {self.folder} is damaged: a journal line is not JSON") from err

    def _read_times(self) -> None:
        try:
            with open(self.folder / "times.i64", "rb") as times:
                times.seek(self._times_offset)
                data = times.read()
        except FileNotFoundError:
            return
        data = data[: len(data) - len(data) % 16]
        self._times_offset += len(data)
        pairs = array("q")
        pairs.frombytes(data)
        self._stamp_indexes.extend(pairs[0::2])
        self._stamps.extend(pairs[1::2])

    def _stamp_of(self, index: int, total: int) -> tuple[int, int]:
        """The timestamp of loss ``index`` (when it was spooled), and where that stamp's values end."""
        position = bisect.bisect_right(self._stamp_indexes, index) - 1
        if position < 0:
            return _now_ms(), total  # a spool without times (damaged): stamp them now
        end = self._stamp_indexes[position + 1] if position + 1 < len(self._stamp_indexes) else total
        return self._stamps[position], min(end, total)

    def _read_losses(self, start: int, end: int) -> array:
        values = array("d")
        with open(self.folder / "losses.f64", "rb") as losses:
            losses.seek(start * 8)
            values.frombytes(losses.read((end - start) * 8))
        return values

    def _save_state(self) -> None:
        _write_json(self.folder / "delivered.json", {"losses": self.losses_delivered,
                                                     "journal": self.writes_delivered, "failure": self.failure})

    def note_failure(self, err: BaseException | None) -> None:
        """Keep why the store failed (or that it answers again), for whoever reports what is pending."""
        self.failure = failures.describe(self.client.tracking_uri, err) if err is not None else None
        self._save_state()

    def remove(self) -> None:
        """Forget the spool: everything in it is in the store."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _record() -> Any:
    from mlrepro.store import record

    return record


def _superseded(entry: dict[str, Any], later: list[dict[str, Any]]) -> bool:
    """An exact loss record that a later one replaces (a run's record is rewritten at each flush):
    after an outage only the newest is sent."""
    if entry["method"] != "log_artifact":
        return False
    name, folder = Path(entry["args"][1]).name, entry["kwargs"].get("artifact_path")
    return any(other["method"] == "log_artifact" and Path(other["args"][1]).name == name
               and other["kwargs"].get("artifact_path") == folder for other in later)


def _read_delivered(path: Path) -> tuple[int, int, str | None]:
    try:
        state = json.loads(path.read_text())
        return int(state["losses"]), int(state["journal"]), state.get("failure")
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0, None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextmanager
def holding(folder: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the spool's delivery lock; yields False (and holds nothing) if another holds it and
    ``wait`` is False."""
    import fcntl

    with open(folder / "lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def delivering() -> Iterator[None]:
    """MLflow's client as a deliverer needs it. MLflow retries a failed HTTP request itself, for
    minutes with its default backoff; a deliverer retries on its own schedule instead, and must
    hear of a failure at once. And ending a run on a server prints the run's URL on stdout,
    where ``mlrepro sync`` prints its own lines."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def deliver_until(delivery: Delivery, patience_s: float, more_to_come: Callable[[], bool] = lambda: False,
                  wake: Callable[[float], None] = time.sleep, on_failure: Callable[[BaseException], None] | None = None,
                  on_recovery: Callable[[], None] | None = None) -> Pending:
    """Deliver, retrying a failing store with backoff, until nothing is pending and nothing more
    is coming, or until the store has taken nothing for ``patience_s`` seconds: a slow store that
    takes a long run's steps is waited for, one that does not answer is not. ``wake(seconds)``
    waits for more to deliver. A refusal (``StoreRefusedError``) ends it at once."""
    transient = failures.store_failures()
    backoff = 0.0
    progress, since = (delivery.losses_delivered, delivery.writes_delivered), time.monotonic()
    while True:
        try:
            delivery.deliver_available()
            if backoff:
                delivery.note_failure(None)
                if on_recovery is not None:
                    on_recovery()
            backoff = 0.0
        except transient as err:
            if not backoff:
                delivery.note_failure(err)
                if on_failure is not None:
                    on_failure(err)
            backoff = min(MAX_BACKOFF_S, backoff * 2 or FIRST_BACKOFF_S)
        now = (delivery.losses_delivered, delivery.writes_delivered)
        if now != progress:
            progress, since = now, time.monotonic()
        pending = delivery.pending()
        coming = more_to_come()
        if pending.nothing and not coming:
            return pending
        give_up_at = since + patience_s
        if not pending.nothing and time.monotonic() >= give_up_at:
            return pending
        wait = backoff if backoff else (0.1 if coming or not pending.nothing else 0.0)
        wake(min(wait, max(0.0, give_up_at - time.monotonic())) if not pending.nothing else wait)


# --- mlrepro sync --------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    run_id: str
    delivered_steps: int
    delivered_writes: int
    pending: Pending | None  # None: nothing left, the spool is gone
    busy: bool = False  # its own writer is delivering it now
    error: str | None = None

    def describe(self) -> str:
        if self.busy:
            return f"run {self.run_id}: its own job is delivering it now; nothing done"
        done = f"delivered {self.delivered_steps:,} steps and {self.delivered_writes} other writes"
        if self.error is not None:
            return f"run {self.run_id}: {done}; {self.pending.describe() if self.pending else 'the rest'} " \
                   f"still pending: {self.error}"
        if self.pending is not None and not self.pending.nothing:
            return f"run {self.run_id}: {done}; {self.pending.describe()} still pending"
        return f"run {self.run_id}: {done}; nothing pending"


def spooled_runs() -> list[str]:
    folder = root()
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if (entry / "run.json").is_file())


def _spooled_run(text: str) -> str:
    """The spooled run ``text`` names: its id, or the unique start of one (8 digits or more)."""
    found = [run_id for run_id in spooled_runs() if run_id == text or (len(text) >= 8 and run_id.startswith(text))]
    if len(found) != 1:
        why = "nothing of it is pending on this machine" if not found else "it is the start of more than one run id"
        raise SpoolError(f"no spool for run {text!r} in {root()}: {why}")
    return found[0]


def store_of(folder: Path, environment_uri: str | None) -> str:
    """The store a spool delivers to. Its URI is kept without credentials; where it had some,
    the caller's ``MLFLOW_TRACKING_URI`` must name the same store with them."""
    try:
        recorded = json.loads((folder / "run.json").read_text())["tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpoolError(f"the spool {folder} is damaged: run.json unreadable ({err.__class__.__name__})") from err
    if environment_uri and redacted_uri(_absolute(environment_uri)) == recorded:
        return _absolute(environment_uri)
    return recorded


def sync(run_ids: list[str], wait_s: float, environment_uri: str | None) -> list[SyncResult]:
    """Deliver the spools of ``run_ids`` (every spooled run where empty), each for at most ``wait_s``."""
    from mlflow.tracking import MlflowClient

    results = []
    for run_id in [_spooled_run(text) for text in run_ids] or spooled_runs():
        folder = root() / run_id
        uri = store_of(folder, environment_uri)
        with holding(folder, wait=False) as held, delivering():
            if not held:
                results.append(SyncResult(run_id, 0, 0, None, busy=True))
                continue
            delivery = Delivery(folder, MlflowClient(uri))
            before = delivery.losses_delivered, delivery.writes_delivered
            try:
                pending = deliver_until(delivery, wait_s)
                error = None if pending.nothing else pending.reason or "the time to wait ran out"
            except StoreRefusedError as err:
                pending, error = delivery.pending(), str(err)
            steps, writes = delivery.losses_delivered - before[0], delivery.writes_delivered - before[1]
            if pending.nothing:
                delivery.remove()
            results.append(SyncResult(run_id, steps, writes, None if pending.nothing else pending, error=error))
    return results


def warn(message: str) -> None:
    """One line on stderr, as a job's other lines."""
    print(f"mlrepro: {message}", file=sys.stderr, flush=True)
