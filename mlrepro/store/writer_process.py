"""A writer process: it delivers one run's spool to the store while the run trains, retrying with backoff
while the store fails, and exits once the store holds all of it. Forked by the zygote
(``mlrepro.store.zygote``), or started as ``python -m mlrepro.store.writer_process`` where no zygote can fork.

Wire format on its stdin: one JSON line (the tracking URI and the spool's folder), then one byte each
time there is something new in the spool. EOF ends the run."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass



def _warm_client() -> Any:
    """While waiting for a run, open the store the run will most likely use.

    Opening MLflow's SQLite store costs about half a second (engine, schema
    check); done here it overlaps the parent's imports. A SQLite store whose
    schema is not made yet is left alone: two processes that migrate one schema
    at once race, and one of them fails.
    """
    # MLflow is imported by the zygote once, before it forks; a spawned writer imports it here
    from mlflow.tracking import MlflowClient

    from mlrepro.store.opening import sqlite_schema_is_current

    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow_default_uri()
    if uri.startswith("sqlite:///") and not sqlite_schema_is_current(Path(uri[len("sqlite:///"):])):
        return None
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
        return client
    except Exception:  # the run will say what is wrong with its store
        return None


def mlflow_default_uri() -> str:
    # MLflow is imported by the zygote once, before it forks; a spawned writer imports it here
    import mlflow

    return mlflow.get_tracking_uri()


def ignore_in_helper_process() -> None:
    """A signal sent to the whole process group (Ctrl-C, a SIGTERM to the job's group) must not
    kill a helper before it has delivered what the run handed it; it ends when the run closes its pipe."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def deliver_run() -> int:
    """A writer: open the likely store while no run has adopted it, read the run's header, then
    deliver its spool until the run ends and all of it is in the store."""
    ignore_in_helper_process()  # Ctrl-C reaches the whole group; this process ends when the run closes its pipe
    # Below the training loop in the scheduler's order: on a machine with as many busy threads as
    # cores the writer waits, not the loop (the 20,000-step line fit on two cores: its loop 1.13x
    # untracked without, 1.05x with, medians of 6); a run's end, when the loop waits, is not delayed.
    os.nice(10)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow is imported by the zygote once, before it forks; a spawned writer imports it here
    from mlflow.tracking import MlflowClient

    from mlrepro.store import failures
    from mlrepro.store.delivery import Delivery, deliver_until, delivering, holding
    from mlrepro.store.failures import StoreRefusedError
    from mlrepro.store.spool import warn

    warm = _warm_client()
    stdin = sys.stdin.buffer
    header = stdin.readline()
    if not header:
        return 0  # a spare that was never adopted
    config = json.loads(header)
    if warm is not None and warm.tracking_uri == config["tracking_uri"]:
        client = warm
    else:
        client = MlflowClient(config["tracking_uri"])
    folder = Path(config["spool"])
    descriptor = stdin.fileno()
    ended = False

    def wait_for_more(seconds: float) -> None:
        nonlocal ended
        if ended:
            time.sleep(seconds)
            return
        readable, _, _ = select.select([descriptor], [], [], seconds)
        if readable and not os.read(descriptor, 65536):
            ended = True  # EOF: the run is over (or its process died); deliver what is spooled

    def failing(err: BaseException) -> None:
        warn(f"the tracking store stopped answering ({failures.describe(config['tracking_uri'], err)}); "
             f"training goes on, and what it logs waits in {folder} until the store answers")

    def answering() -> None:
        warn("the tracking store answers again; delivering the steps that waited")

    with holding(folder), delivering():
        delivery = Delivery(folder, client)
        try:
            deliver_until(delivery, float("inf"), more_to_come=lambda: not ended, wake=wait_for_more,
                          on_failure=failing, on_recovery=answering)
        except StoreRefusedError as err:
            warn(f"{err}; what is left stays in {folder}")
            return 1
        delivery.remove()
    return 0


if __name__ == "__main__":
    status = deliver_run()
    # Every step is committed and counted in the progress file by now. A normal
    # interpreter exit with MLflow loaded (its atexit hooks, thread pools, module
    # teardown) takes about 0.4 s more, and the run waits on this process's exit:
    # leave at once. stdout is /dev/null and stderr unbuffered, so nothing is lost.
    sys.stderr.flush()
    os._exit(status)
