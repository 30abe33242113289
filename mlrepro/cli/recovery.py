"""The commands that finish what a run could not: ``sync`` delivers what waits in a spool, and
``mark-killed`` ends a run whose process is gone."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from mlrepro.cli.exits import EXIT_ERROR, EXIT_OK, EXIT_PENDING, user_errors
from mlrepro.errors import redacted

if TYPE_CHECKING:
    pass


@click.command(name="mark-killed")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN...")
def mark_killed(run_ids: tuple[str, ...]) -> None:
    """End RUNNING runs whose process is gone (killed with SIGKILL, or lost with its machine) as KILLED.

    Only a run whose recorded process is checked gone on this host is marked; a live one is left alone.
    """
    # MLflow only when the command runs: `mlrepro --help` stays light

    from mlrepro.store import opening, record, spool, sync

    with user_errors():
        client = opening.existing_store()
        for run_id in run_ids:
            run_id = opening.resolve_run_id(client, run_id)
            if run_id in sync.spooled_runs():  # what the killed job spooled but never delivered
                for result in sync.sync([run_id], spool.store_wait_s(), client.tracking_uri):
                    click.echo(result.describe())
            run = record.mark_killed(client, run_id)
            click.echo(f"marked run {run.run_id} KILLED: its process is gone; it logged {len(run.losses)} steps "
                       f"({run.loss_source})")


class _ProgressLine:
    """A long spool's delivery, said on stderr every few seconds: a sync of 40,000 steps takes minutes."""

    EVERY_S = 3.0

    def __init__(self) -> None:
        self._last = time.monotonic()

    def __call__(self, run_id: str, done: int, total: int) -> None:
        if time.monotonic() - self._last >= self.EVERY_S or done == total and total > 10_000:
            self._last = time.monotonic()
            click.echo(f"  run {run_id[:8]}: {done:,} of {total:,} steps delivered", err=True)


@click.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN]...")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="How long to keep trying a store that fails (default: MLREPRO_STORE_WAIT_S, else 60).")
@click.option("--discard", is_flag=True,
              help="Let the named runs' spools go without delivering them (a store that is gone for good).")
def sync(run_ids: tuple[str, ...], wait_s: float | None, discard: bool) -> None:
    """Deliver what runs on this machine kept in their spool while the tracking store was away.

    With no RUN, every run with a spool. Idempotent: delivered steps are not sent again, and
    each run's record arrives in order, bit for bit. Exit 0 when nothing is left, 4 when some
    is still pending, 2 when a spool is damaged or its store (a SQLite file, a folder) is gone:
    named, kept, and the others delivered all the same. A store that is gone is never made again;
    `--discard RUN...` lets such a spool go.
    """
    # MLflow only when the command runs: `mlrepro --help` stays light
    import mlflow

    from mlrepro.store import spool, sync

    if discard:
        with user_errors():
            for discarded in sync.discard(list(run_ids)):
                click.echo(discarded.describe())
        sys.exit(EXIT_OK)
    with user_errors():
        wait = spool.store_wait_s() if wait_s is None else wait_s
        results = sync.sync(list(run_ids), wait, mlflow.get_tracking_uri(), on_progress=_ProgressLine())
        if not results:
            click.echo(f"nothing to deliver: no run has a spool in {spool.root()}")
        for result in results:
            click.echo(redacted(result.describe()))
    if any(result.damaged or result.store_gone for result in results):
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_PENDING if any(result.pending is not None for result in results) else EXIT_OK)


