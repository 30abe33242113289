"""Per-step losses to MLflow from a separate process, so the training loop never waits on the store.

Measured on a 2-core machine with a SQLite store: ``log_batch`` costs about
60 us a metric of pure Python, about as long as a line-fit step. A writer
*thread* would hold the GIL for that long and slow the loop by about that much, so
the writing happens in a child process (``python -m mlrepro.writer``). The
training thread only appends a float to an array; a sender thread in the parent
appends the new values to the run's spool (``mlrepro.spool``) every
``SEND_INTERVAL_S`` seconds, and the child delivers the spool to the store, retrying
with backoff while the store fails.

Wire format on the child's stdin: one JSON line (the tracking URI and the spool's
folder), then one byte each time there is something new in the spool. EOF ends the
run: the child delivers what is left and exits 0 once the store holds all of it. The
run waits for that a bounded time (``MLREPRO_STORE_WAIT_S``); what is still pending
then stays in the spool for ``mlrepro sync``.

This module imports only the standard library at the top: ``prestart`` is
meant to run before torch and MLflow are imported, so that the child's own
imports overlap the parent's.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mlrepro.spool import Spool

SEND_INTERVAL_S = 0.1

_spare: subprocess.Popen[bytes] | None = None


def _spawn() -> subprocess.Popen[bytes]:
    # The child must run this very copy of mlrepro, wherever it was imported from.
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "mlrepro.writer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=python_path, PYTHONUNBUFFERED="1"),
    )
    _open_pipes.add(process.stdin.fileno())  # type: ignore[union-attr]
    return process


def prestart() -> None:
    """Start a writer process now, to be adopted by the next run: its import of MLflow
    (a second or two) then overlaps the caller's own imports instead of the training."""
    global _spare
    if os.environ.get("RANK", "0") != "0":
        return  # a torchrun rank other than 0 never writes to the store: rank 0 owns the run
    if _spare is None or _spare.poll() is not None:
        _spare = _spawn()


def _adopt() -> subprocess.Popen[bytes]:
    global _spare
    process, _spare = _spare, None
    if process is None or process.poll() is not None:
        process = _spawn()
    return process


_open_pipes: set[int] = set()


def _close_pipes_in_fork() -> None:
    """A forked child (a DataLoader worker) must not hold the writer's pipe open:
    the writer only sees the end of the run when every copy of the pipe is closed.
    The raw descriptors are closed, so no buffered bytes are flushed twice."""
    for descriptor in list(_open_pipes):
        try:
            os.close(descriptor)
        except OSError:
            pass
    _open_pipes.clear()
    global _spare
    _spare = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_pipes_in_fork)


@atexit.register
def _release_spare() -> None:
    if _spare is not None and _spare.poll() is None and _spare.stdin is not None:
        _open_pipes.discard(_spare.stdin.fileno())
        _spare.stdin.close()  # EOF before any header: the child exits at once


class LossWriter:
    """The parent's end: spools the values of a growing ``array('d')`` and wakes the writer process.

    Every ``SEND_INTERVAL_S`` a sender thread appends the new values to the run's spool
    (a write that releases the GIL) and sends the writer one byte; the writer delivers
    what the spool holds. The journal's writes (``Spool.set_tag``, ...) wake it too.
    """

    def __init__(self, values: array, spool: Spool, tracking_uri: str) -> None:
        self._values = values
        self._spool = spool
        self._spooled = 0
        self._process = _adopt()
        self._stdin: IO[bytes] = self._process.stdin  # type: ignore[assignment]
        self._awake = True
        # The URI goes through the pipe, credentials and all; the spool keeps it without them.
        header = {"tracking_uri": tracking_uri, "spool": str(spool.folder)}
        self._wake((json.dumps(header) + "\n").encode())
        os.set_blocking(self._stdin.fileno(), False)  # a writer that lags never blocks the run
        _open_pipes.update(spool.descriptors)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="mlrepro-loss-sender", daemon=True)
        self._sender.start()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self._process

    def _wake(self, data: bytes = b"\0") -> None:
        if not self._awake:
            return
        try:
            os.write(self._stdin.fileno(), data)
        except BlockingIOError:
            pass  # the pipe is full of wake-ups the writer has not read: it is awake
        except (BrokenPipeError, OSError, ValueError):
            self._awake = False  # the writer is gone; the spool keeps everything, and close() delivers it

    def _spool_pending(self) -> None:
        end = len(self._values)
        if end > self._spooled:
            self._spool.append_losses(self._values[self._spooled : end])
            self._spooled = end

    def _send_loop(self) -> None:
        while not self._closing.wait(SEND_INTERVAL_S):
            with self._lock:
                self._spool_pending()
                self._wake()

    def send_now(self) -> None:
        """Spool what is pending and wake the writer, without waiting for the next interval."""
        with self._lock:
            self._spool_pending()
            self._wake()

    def stop_sending(self) -> None:
        """Spool every value the loop recorded; the sender thread stops."""
        self._closing.set()
        self._sender.join()
        self._spool_pending()

    def close(self, patience_s: float) -> Literal["delivered", "died", "stalled"]:
        """Tell the writer the run is over, and wait until it has delivered everything ("delivered"),
        until it exits without (a crash: "died"), or until it has delivered nothing for ``patience_s``
        seconds (the store takes nothing: "stalled", and the writer is stopped)."""
        self.stop_sending()
        _open_pipes.discard(self._stdin.fileno())
        for descriptor in self._spool.descriptors:
            _open_pipes.discard(descriptor)
        try:
            self._stdin.close()
        except OSError:
            pass
        progress, since = self._spool.delivered(), time.monotonic()
        while True:
            try:
                wait_for_exit(self._process, min(0.5, patience_s))
                return "delivered" if self._process.returncode == 0 else "died"
            except subprocess.TimeoutExpired:
                now = self._spool.delivered()
                if now != progress:
                    progress, since = now, time.monotonic()
                elif time.monotonic() - since >= patience_s:
                    break
        self._process.kill()  # it is retrying a store that takes nothing; the spool keeps the rest
        self._process.wait()
        return "stalled"


def wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait for the writer to exit, and notice it at once: ``Popen.wait(timeout)`` polls
    in sleeps of up to 50 ms, which every run would pay at its end. A pidfd (Linux 5.3+)
    becomes readable the moment the process exits; elsewhere the polling wait does."""
    try:
        descriptor = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        process.wait(timeout=timeout_s)
        return
    try:
        select.select([descriptor], [], [], timeout_s)
    finally:
        os.close(descriptor)
    process.wait(timeout=0)  # reaps it, or raises TimeoutExpired if it is still running


# --- the child process ---------------------------------------------------------


def _warm_client() -> Any:
    """While waiting for a run, open the store the run will most likely use.

    Opening MLflow's SQLite store costs about half a second (engine, schema
    check); done here it overlaps the parent's imports. A SQLite store whose
    schema is not made yet is left alone: two processes that migrate one schema
    at once race, and one of them fails.
    """
    from mlflow.tracking import MlflowClient

    from mlrepro.record import sqlite_schema_is_current

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
    import mlflow

    return mlflow.get_tracking_uri()


def main() -> int:
    import logging

    from mlrepro.signals import ignore_in_helper_process

    ignore_in_helper_process()  # Ctrl-C reaches the whole group; this process ends when the run closes its pipe

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    from mlrepro.errors import describe_store_failure
    from mlrepro.spool import Delivery, StoreRefusedError, deliver_until, holding, warn, delivering

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
        warn(f"the tracking store stopped answering ({describe_store_failure(config['tracking_uri'], err)}); "
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
    status = main()
    # Every step is committed and counted in the progress file by now. A normal
    # interpreter exit with MLflow loaded (its atexit hooks, thread pools, module
    # teardown) takes about 0.4 s more, and the run waits on this process's exit:
    # leave at once. stdout is /dev/null and stderr unbuffered, so nothing is lost.
    sys.stderr.flush()
    os._exit(status)
