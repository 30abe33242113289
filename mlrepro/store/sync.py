"""``mlrepro sync``: deliver what runs on this machine kept in their spools, from any folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlrepro.errors import redacted_uri
from mlrepro.store.delivery import Delivery, Pending, deliver_until, delivering, holding
from mlrepro.store.failures import StoreRefusedError
from mlrepro.store.spool import SpoolError, absolute_uri, root


@dataclass(frozen=True)
class SyncResult:
    run_id: str
    delivered_steps: int
    delivered_writes: int
    pending: Pending | None  # None: nothing left, the spool is gone
    busy: bool = False  # its own writer is delivering it now
    error: str | None = None
    damaged: bool = False  # a line the spool never wrote: delivery stopped there, the spool is kept
    store_gone: bool = False  # its store (a SQLite file, a folder) is no longer there: nothing delivered, nothing made

    def describe(self) -> str:
        if self.busy:
            return f"run {self.run_id}: another process (its job, or another sync) is delivering it now; nothing done"
        if self.damaged:
            return f"run {self.run_id}: not delivered past a damaged line, and kept as it is: {self.error}"
        if self.store_gone:
            return (f"run {self.run_id}: {self.error}; nothing delivered and no store made, the spool kept "
                    f"(mlrepro sync --discard {self.run_id} lets it go)")
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
    if environment_uri and redacted_uri(absolute_uri(environment_uri)) == recorded:
        return absolute_uri(environment_uri)
    return recorded


def sync(run_ids: list[str], wait_s: float, environment_uri: str | None,
         on_progress: Callable[[str, int, int], None] | None = None) -> list[SyncResult]:
    """Deliver the spools of ``run_ids`` (every spooled run where empty), each for at most ``wait_s``;
    ``on_progress(run_id, steps delivered, steps spooled)`` hears of each batch. A damaged spool is
    named in its result and kept; it stops no other spool's delivery."""
    results = []
    for run_id in [_spooled_run(text) for text in run_ids] or spooled_runs():
        try:
            results.append(_sync_one(run_id, wait_s, environment_uri, on_progress))
        except SpoolError as err:  # this spool only: the others are still delivered
            results.append(SyncResult(run_id, 0, 0, None, error=str(err), damaged=True))
    return results


def _sync_one(run_id: str, wait_s: float, environment_uri: str | None,
              on_progress: Callable[[str, int, int], None] | None) -> SyncResult:
    # MLflow only when there is a spool to deliver
    from mlflow.tracking import MlflowClient

    from mlrepro.store import opening

    folder = root() / run_id
    uri = store_of(folder, environment_uri)
    gone = opening.local_store_path(uri)
    if gone is not None and not gone.exists():  # deleted with its folder: MLflow would make a new, empty one
        return SyncResult(run_id, 0, 0, None, error=f"its tracking store {gone} is gone", store_gone=True)
    with holding(folder, wait=False) as held, delivering():
        if not held:
            return SyncResult(run_id, 0, 0, None, busy=True)
        delivery = Delivery(folder, MlflowClient(uri))
        if on_progress is not None:
            delivery.on_progress = lambda done, total: on_progress(run_id, done, total)
        before = delivery.losses_delivered, delivery.writes_delivered
        try:
            pending = deliver_until(delivery, wait_s)
            error = None if pending.nothing else pending.reason or "the time to wait ran out"
        except StoreRefusedError as err:
            pending, error = delivery.pending(), str(err)
        steps, writes = delivery.losses_delivered - before[0], delivery.writes_delivered - before[1]
        if pending.nothing:
            delivery.remove()
        return SyncResult(run_id, steps, writes, None if pending.nothing else pending, error=error)


@dataclass(frozen=True)
class Discarded:
    run_id: str
    pending: Pending | None  # what it held that its store never got; None: another process delivers it now

    def describe(self) -> str:
        if self.pending is None:
            return f"run {self.run_id}: another process (its job, or a sync) is delivering it now; not discarded"
        return f"run {self.run_id}: spool discarded, with {self.pending.describe()} its store never got"


def discard(run_ids: list[str]) -> list[Discarded]:
    """Let the spools of ``run_ids`` go, undelivered: for a spool whose store is gone for good. Only
    the runs named, each by its id or the unique start of one; never a spool another process holds."""
    if not run_ids:
        raise SpoolError("sync --discard: name the runs whose spools to let go (mlrepro sync lists what is pending)")
    results = []
    for run_id in [_spooled_run(text) for text in run_ids]:
        folder = root() / run_id
        with holding(folder, wait=False) as held:
            if not held:
                results.append(Discarded(run_id, None))
                continue
            delivery = Delivery(folder, None)  # type: ignore[arg-type]  # counts what waits; delivers nothing
            results.append(Discarded(run_id, delivery.pending()))
            delivery.remove()
    return results
