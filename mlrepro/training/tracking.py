"""Open an MLflow run for a spec: seed it, record it, and take the loss of every step.

``start_run`` works the same whether the run is new or was created by ``mlflow
run`` (the launcher passes ``MLFLOW_RUN_ID`` and the run is resumed), and against
any tracking URI MLflow supports.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import mlflow
import torch
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.tracking import MlflowClient

from mlrepro.capture.code import CodeRecord, capture_code
from mlrepro.capture.device import resolve_device
from mlrepro.capture.environment import capture_environment
from mlrepro.capture.losses import LossSeries
from mlrepro.capture.own_run import recording_own_run
from mlrepro.capture.seeding import seed_everything, seed_generators
from mlrepro.capture.spec import BaseSpec, DistributedSpec
from mlrepro.errors import MlreproError, SpecError, redacted_uri
from mlrepro.store import failures, opening, record, resume_links
from mlrepro.store.delivery import Pending
from mlrepro.store.spool import (
    DeliveryPendingError,
    ready_root,
    store_wait_s,
    warn,
)
from mlrepro.training import distributed
from mlrepro.training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    newest_checkpoint,
)
from mlrepro.training.orders import (
    LegReport,
    Orders,
    StopRequested,
    read_orders,
    write_report,
)
from mlrepro.training.rank_run import RankRun
from mlrepro.training.runs import TrackedRun
from mlrepro.training.signals import Interruption, RunInterrupted, interruptible
from mlrepro.training.tracing import tracing


@contextmanager
def start_run(spec: BaseSpec, *, run_name: str | None = None) -> Iterator[TrackedRun]:
    """Open (or resume) an MLflow run for ``spec``, seeded and recorded; yields a ``TrackedRun``.

    Everything is checked before a run exists: the device, the spool, and for ``resume_from``
    the run, its spec and its checkpoint. A run that raises ends FAILED, with every loss
    logged before the error; one stopped by SIGINT or SIGTERM ends KILLED, with every
    loss too, and raises ``RunInterrupted``. If the store stops answering, training goes
    on; a run that ends while it still does not answer raises ``DeliveryPendingError``,
    which says what waits in the spool for ``mlrepro sync``. Started outside ``mlflow run``,
    it says which run it is. Under torchrun every rank calls it; ranks other than 0 get a
    ``RankRun`` and open nothing.
    """
    device = resolve_device(spec.device)
    world = distributed.join(device)  # under torchrun: this process's rank
    if world is not None:
        device = _rank_device(spec, device, world)
        if not world.owns_run:
            yield from _follow_rank_0(spec, device, world)
            return
    ready = checked_before_opening(spec)
    tracked = _open(spec, device, world, ready, run_name)
    yield from _train(tracked, ready.orders)


@dataclass(frozen=True)
class _Ready:
    """What ``start_run`` checked and read before the run exists."""

    client: MlflowClient
    orders: Orders | None  # a leg of `mlrepro check` or `mlrepro bisect`; None for the user's own start
    resumed_from: str | None
    resume: Checkpoint | None
    resumed_losses: LossSeries | None
    launched: bool  # `mlflow run` created the run
    code: CodeRecord


def _rank_device(spec: BaseSpec, device: torch.device, world: distributed.World) -> torch.device:
    nproc = spec.nproc if isinstance(spec, DistributedSpec) else world.size
    if nproc != world.size:  # the spec says what was computed: nproc is every process, on every node
        raise SpecError(f"nproc: must be the number of processes torchrun started on all nodes "
                        f"({world.size}), got {nproc}")
    return distributed.rank_device(device, world)


def checked_before_opening(spec: BaseSpec) -> _Ready:
    """Bad input and an unusable store or checkpoint are said before a run exists: a bad
    ``MLREPRO_STORE_WAIT_S``, a spool that cannot be written, a store that does not open, and for
    ``resume_from`` the run, its spec and its checkpoint. What start_run needs next, read."""
    store_wait_s()  # a bad MLREPRO_STORE_WAIT_S is bad input
    ready_root()
    orders = read_orders()
    client = opening.ready_store(mlflow.get_tracking_uri())
    resumed_from, resume = newest_checkpoint(client, spec) if spec.resume_from else (None, None)
    if orders is not None and orders.checkpoint:
        resume = load_checkpoint(orders.checkpoint)
    resumed_losses = record.read_losses(client, resumed_from) if resumed_from is not None else None
    code = capture_code()  # before the run: the sources loaded by now are the job's
    return _Ready(client, orders, resumed_from, resume, resumed_losses, bool(MLFLOW_RUN_ID.get()), code)


def _open(spec: BaseSpec, device: torch.device, world: distributed.World | None, ready: _Ready,
          run_name: str | None) -> TrackedRun:
    """Create the run, seed everything, record what the run is; a failure here ends it FAILED."""
    with failures.store_errors(ready.client), recording_own_run():
        run_id = mlflow.start_run(run_name=run_name or (None if ready.launched else spec.job)).info.run_id
    try:
        seed_record = seed_everything(spec.seed, deterministic=spec.deterministic, threads=spec.threads)
        group = distributed.facts(world, device, _bucket_cap_mb(spec)) if world is not None else {}
        environment = capture_environment(extra={"run.device": str(device), **ready.code.facts(), **group})
        record.write_start(ready.client, run_id, spec, seed_record, environment, ready.code)
        tracked = TrackedRun(run_id, spec, device, seed_record, environment, ready.client, ready.resume, world)
        tracked.named_by_mlrepro = run_name is None and not ready.launched
        if ready.orders is not None and ready.orders.stop_after is not None:
            tracked.stop_after(ready.orders.stop_after)
        if world is not None:
            distributed.share_from_rank_0((run_id, ready.resume))
        if ready.resumed_from is not None and ready.resume is not None:
            resume_links.write_resume_links(ready.client, run_id, ready.resumed_from, ready.resume.step)
            tracked.resumed_from, tracked.resumed_losses = ready.resumed_from, ready.resumed_losses
    except BaseException:
        with contextlib.suppress(Exception):  # the store's failure is the error being raised already
            mlflow.end_run("FAILED")
        raise
    if not ready.launched:  # `mlflow run` prints the run id itself
        print(f"mlrepro: run {run_id} in {redacted_uri(ready.client.tracking_uri)}", file=sys.stderr, flush=True)
    if ready.resume is not None:
        print(f"mlrepro: continues run {ready.resumed_from} from step {ready.resume.step}", file=sys.stderr, flush=True)
    return tracked


def _train(tracked: TrackedRun, orders: Orders | None) -> Iterator[TrackedRun]:
    """Hand the run to the loop; whatever ends it (the loop's end, an error, a signal), save it all."""
    status, failure = "FINISHED", None
    with interruptible() as interruption:
        # MLflow may draw from Python's `random` (run names are drawn from it) while
        # the run is opened and recorded, so the generators are seeded again last,
        # right before the training loop gets control: a run created by `mlflow run`
        # and one created here then start from the same state.
        seed_generators(tracked.spec.seed)
        loop_started = time.perf_counter()
        try:
            with tracing(orders, tracked.first_step, lambda: tracked.first_step + tracked.steps_logged,
                         tracked.watched_model):
                yield tracked
        except StopRequested:  # the orders' last step is done: the run ends FINISHED, short of its end
            record.write_ended_on_orders(tracked.spool, tracked.run_id, tracked.first_step + tracked.steps_logged)
        except MlreproError as err:
            status, failure = "FAILED", err
            record.write_error(tracked.spool, tracked.run_id, str(err))
            raise
        except BaseException as err:
            status, failure = "FAILED", err
            if interruption.signum is None:
                raise
            # Saving starts before the loop's frames go: a DataLoader iterator shut down with
            # them must not complain that the group's SIGTERM killed its workers.
            interruption.saving()
            # The loop may also have failed on those workers first: the signal still ended the run.
            failure = _interrupted(interruption.signum, tracked)
            raise failure from (None if isinstance(err, RunInterrupted) else err)
        finally:
            ended_by, pending = _save(tracked, orders, interruption, status, failure, loop_started)
    if ended_by is not None or interruption.signum is not None:
        # Arrived while the run was being saved (KILLED), or once its end was spooled (FINISHED).
        interrupted = _interrupted(ended_by or interruption.signum, tracked)  # type: ignore[arg-type]
        interrupted.pending, interrupted.status = pending, "KILLED" if ended_by is not None else "FINISHED"
        raise interrupted
    if not pending.nothing:
        raise DeliveryPendingError(pending.describe_for_user())


def _save(tracked: TrackedRun, orders: Orders | None, interruption: Interruption, status: str,
          failure: BaseException | None, loop_started: float) -> tuple[int | None, Pending]:
    """End the run with every step it logged; the signal that arrived while saving, if one did."""
    interruption.saving()
    # A signal that arrived while the run was being saved ends it KILLED too; one that
    # arrives after this, while the store takes what is spooled, finds it complete.
    ended_by = interruption.signum
    if ended_by is not None:
        status = "KILLED"
        record.write_ended_by_signal(tracked.spool, tracked.run_id, signal.Signals(ended_by).name)
    loop_seconds = time.perf_counter() - loop_started
    pending = tracked.finish(status)
    _leave_fluent_run(status)
    if orders is not None:
        write_report(orders, LegReport(run_id=tracked.run_id, first_step=tracked.first_step,
                                       steps=tracked.steps_logged, loop_seconds=loop_seconds))
    if isinstance(failure, RunInterrupted):
        failure.pending = pending
    elif not pending.nothing and failure is not None:
        warn(pending.describe_for_user())  # beside the error that ended the run
    return ended_by, pending


def _follow_rank_0(spec: BaseSpec, device: torch.device, world: distributed.World) -> Iterator[RankRun]:
    """A rank other than 0: seeded like rank 0, its facts and losses handed to rank 0, no run of its own."""
    seed_record = seed_everything(spec.seed, deterministic=spec.deterministic, threads=spec.threads)
    distributed.facts(world, device, _bucket_cap_mb(spec))
    run_id, resume = distributed.share_from_rank_0(None)  # type: ignore[misc]
    if resume is not None:  # rank 0 read the checkpoint; this rank goes on from its own generators
        ranks = resume.extra.get(distributed.RANKS_KEY)
        if not ranks or len(ranks) != world.size:
            raise SpecError(f"resume_from: the checkpoint holds no state for rank {world.rank} of {world.size}")
        resume = replace(resume, rng=ranks[world.rank]["rng"], extra=ranks[world.rank]["extra"])
    seed_generators(spec.seed)
    follower = RankRun(run_id, spec, device, seed_record, world, resume)
    yield follower
    follower.flush()  # the last gather, which rank 0 makes as it finishes


def _leave_fluent_run(status: str) -> None:
    """Leave the run as MLflow's active run without asking the store anything. The run's end is in
    the spool, and in the store once delivered: ``mlflow.end_run`` would end it again, and first
    read it back to print its URL, with MLflow's retries: minutes, then a traceback, against a
    server that went away once it had everything."""
    # MLflow's private stack of active runs: it has no public way to leave a run without ending it
    from mlflow.tracking import fluent

    stack = getattr(fluent, "_active_run_stack", None)
    if stack is None:  # another MLflow: its own end_run, whatever it costs
        mlflow.end_run(status)
        return
    MLFLOW_RUN_ID.unset()
    if not stack.get():
        return
    run_id = stack.get().pop().info.run_id
    last_active = getattr(fluent, "_last_active_run_id", None)
    if last_active is not None:
        last_active.set(run_id)  # mlflow.last_active_run() still finds it
    monitor = getattr(fluent, "run_id_to_system_metrics_monitor", {}).pop(run_id, None)
    if monitor is not None:  # system metrics the user asked for: their thread ends with the run
        monitor.finish()


def _interrupted(signum: int, tracked: TrackedRun) -> RunInterrupted:
    interrupted = RunInterrupted(signum)
    interrupted.run_id, interrupted.steps = tracked.run_id, tracked.first_step + tracked.steps_logged
    return interrupted


def _bucket_cap_mb(spec: BaseSpec) -> float | None:
    return spec.bucket_cap_mb if isinstance(spec, DistributedSpec) else None
