"""Delivering a spool: its writes replayed on a store in order, each step once however often it is
sent, with backoff while the store fails and a bounded wait at the end. Only one deliverer holds a
spool at a time (``holding``); the run's writer, the run itself and ``mlrepro sync`` all deliver here.

MLflow is imported by the writer process that delivers, never at the top of this module."""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import shutil
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrepro.errors import one_line
from mlrepro.store import failures, keys
from mlrepro.store.spool import (
    DATASET_FIELDS,
    FIRST_BACKOFF_S,
    LOSSES_PER_DELIVERY,
    MAX_BACKOFF_S,
    REPLAYED,
    SpoolError,
    now_ms,
    read_delivered,
    write_json,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


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
        self.losses_delivered, self.writes_delivered, self.failure = read_delivered(folder / "delivered.json")
        # Journal lines read so far, from the first one not delivered; and where reading goes on.
        self._lines: list[dict[str, Any]] = []
        self._lines_start = self.writes_delivered
        self._journal_offset = 0
        self._skip = self.writes_delivered  # lines delivered before this Delivery, still to be read past
        # The spooled times: the first index of each stamp, and the stamp.
        self._stamp_indexes = array("q")
        self._stamps = array("q")
        self._times_offset = 0
        # Told (steps delivered, steps spooled) after each batch: `mlrepro sync` shows a long spool's progress.
        self.on_progress: Callable[[int, int], None] | None = None

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
            if self.on_progress is not None:
                self.on_progress(end, total)
        undelivered = self.writes_delivered - self._lines_start
        last_touched = _last_touched(self._lines, undelivered, self.folder)
        while self.writes_delivered - self._lines_start < len(self._lines):
            position = self.writes_delivered - self._lines_start
            first = _checked_entry(self._lines[position], self.folder)  # before anything reads its fields
            batch = self._next_writes(position)
            if not _superseded(first, position, last_touched):
                self._call(lambda: self._replay(batch))
            self.writes_delivered += len(batch)
            self._save_state()
            for entry in batch:
                if entry["method"] == "log_artifact":  # checked above: a folder of the spool's own files/
                    shutil.rmtree(_spooled_file(entry["args"][1], self.folder).parent, ignore_errors=True)
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
        """Replay journal lines on this spool's own run (run.json's), whatever a line's arguments name:
        a spool is input, and a forged line must not act on another run or on files outside it."""
        entries = [_checked_entry(entry, self.folder) for entry in batch]
        method = entries[0][0]
        if method == "log_metric":
            # MLflow only where a spool is delivered (the writer process)
            from mlflow.entities import Metric

            # Values are kept as text: JSON has no NaN or inf.
            metrics = [Metric(args[0], float(args[1]), kwargs["timestamp"], kwargs["step"]) for _, args, kwargs in entries]
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            return
        _, args, kwargs = entries[0]
        if method == "log_artifact":
            self.client.log_artifact(self.run_id, str(self.folder / args[0]), **kwargs)
        elif method == "delete_checkpoint":
            _checkpoints().delete_checkpoint(self.client, self.run_id, args[0])
        elif method == "log_dataset":
            _datasets().log_dataset(self.client, self.run_id, **kwargs)
        else:
            getattr(self.client, method)(self.run_id, *args, **kwargs)

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
                entry = json.loads(line)
            except ValueError as err:
                raise SpoolError(f"the spool {self.folder} is damaged: a journal line is not JSON") from err
            if not isinstance(entry, dict):
                raise SpoolError(f"the spool {self.folder} is damaged: a journal line is not a write it records")
            self._lines.append(entry)

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
            return now_ms(), total  # a spool without times (damaged): stamp them now
        end = self._stamp_indexes[position + 1] if position + 1 < len(self._stamp_indexes) else total
        return self._stamps[position], min(end, total)

    def _read_losses(self, start: int, end: int) -> array:
        values = array("d")
        with open(self.folder / "losses.f64", "rb") as losses:
            losses.seek(start * 8)
            values.frombytes(losses.read((end - start) * 8))
        return values

    def _save_state(self) -> None:
        write_json(self.folder / "delivered.json", {"losses": self.losses_delivered,
                                                     "journal": self.writes_delivered, "failure": self.failure})

    def note_failure(self, err: BaseException | None) -> None:
        """Keep why the store failed (or that it answers again), for whoever reports what is pending."""
        self.failure = failures.describe(self.client.tracking_uri, err) if err is not None else None
        self._save_state()

    def remove(self) -> None:
        """Forget the spool: everything in it is in the store."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _checkpoints() -> Any:
    # the checkpoints' store module imports MLflow: only where a spool is delivered
    from mlrepro.store import checkpoints

    return checkpoints


def _datasets() -> Any:
    # the datasets' store module imports MLflow's entities: only where a spool is delivered
    from mlrepro.store import datasets

    return datasets


def _record() -> Any:
    # the record imports MLflow: only where a spool is delivered
    from mlrepro.store import record

    return record


_STATUSES = {"FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED", None}


def _spooled_file(relative: Any, folder: Path) -> Path:
    """A file the spool keeps, named relative to it: only ever under its own ``files/NNNNNN/``."""
    files = (folder / "files").resolve()
    if not isinstance(relative, str) or Path(relative).is_absolute():
        raise ValueError("not a path inside the spool")
    path = (folder / relative).resolve()
    if path.parent.parent != files:
        raise ValueError("not a file of the spool's own files/")
    return path


def _checked_entry(entry: Any, folder: Path) -> tuple[str, list[Any], dict[str, Any]]:
    """A journal line as the spool wrote it: one of its methods, with arguments of the types it
    writes; the run id a line names is dropped (the spool's run.json says whose it is). Anything
    else stops delivery of this spool, which keeps every line, with ``SpoolError``."""
    try:
        method, args, kwargs = entry["method"], list(entry["args"]), dict(entry["kwargs"])
        if not isinstance(method, str):
            raise ValueError("a method that is not a name")
        if method not in REPLAYED:
            raise ValueError(f"unknown write {method!r}")
        rest = args[1:]  # args[0]: the run id as the job wrote it; never used
        if method == "set_tag" and len(rest) == 2 and all(isinstance(word, str) for word in rest) and not kwargs:
            return method, rest, {}
        if method == "log_metric" and len(rest) == 2 and all(isinstance(word, str) for word in rest) \
                and isinstance(kwargs.get("timestamp"), int) and isinstance(kwargs.get("step"), int):
            float(rest[1])
            return method, rest, {"timestamp": kwargs["timestamp"], "step": kwargs["step"]}
        if method == "log_artifact" and len(rest) == 1 and set(kwargs) <= {"artifact_path"}:
            _spooled_file(rest[0], folder)
            artifact_path = kwargs.get("artifact_path")
            if artifact_path is not None and (not isinstance(artifact_path, str) or artifact_path.startswith("/")
                                              or ".." in artifact_path.split("/")):
                raise ValueError("an artifact folder outside the run's")
            return method, [rest[0]], {"artifact_path": artifact_path}
        if method == "delete_checkpoint" and len(rest) == 1 and type(rest[0]) is int and rest[0] >= 0 and not kwargs:
            return method, rest, {}
        if method == "log_dataset" and not rest and set(kwargs) == set(DATASET_FIELDS) \
                and all(isinstance(value, str) for value in kwargs.values()):
            return method, [], kwargs
        if method == "set_terminated" and not rest and kwargs.get("status") in _STATUSES \
                and isinstance(kwargs.get("end_time"), int) and set(kwargs) == {"status", "end_time"}:
            return method, [], kwargs
        raise ValueError(f"a {method} line whose arguments the spool never writes")
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise SpoolError(f"the spool {folder} is damaged: a journal line is not one it wrote ({one_line(str(err))}); "
                         "nothing after it is delivered, and nothing is removed") from err


def _last_touched(lines: list[dict[str, Any]], start: int, folder: Path) -> dict[tuple[str, str | None], int]:
    """For each artifact file the journal's lines from ``start`` on write or remove, as (file name,
    artifact folder), the position of the last line that does. One pass, each line checked once: a
    spool after a long outage holds thousands of lines, and asking each artifact line of every later
    one was quadratic. Only lines as the spool writes them count; any other is refused when
    delivery reaches it."""
    last: dict[tuple[str, str | None], int] = {}
    for position in range(start, len(lines)):
        try:
            method, args, kwargs = _checked_entry(lines[position], folder)
        except SpoolError:
            continue
        if method == "log_artifact":
            last[(Path(args[0]).name, kwargs.get("artifact_path"))] = position
        elif method == "delete_checkpoint":
            checkpoint = keys.checkpoint_file(args[0])
            for name in (checkpoint, checkpoint + keys.CHECKSUM_SUFFIX):
                last[(name, keys.CHECKPOINT_ARTIFACT_DIR)] = position
    return last


def _superseded(entry: tuple[str, list[Any], dict[str, Any]], position: int,
                last_touched: dict[tuple[str, str | None], int]) -> bool:
    """Whether the write ``entry`` (checked, at ``position``) is of a file a later line makes moot,
    after an outage: an exact loss record that a later one replaces (a run's record is rewritten at
    each flush), or a checkpoint a later line removes."""
    method, args, kwargs = entry
    if method != "log_artifact":
        return False
    return last_touched.get((Path(args[0]).name, kwargs.get("artifact_path")), -1) > position


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextmanager
def holding(folder: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the spool's delivery lock; yields False (and holds nothing) if another holds it and
    ``wait`` is False."""
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
