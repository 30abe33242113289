"""Per-step losses to MLflow from a separate process, so the training loop never waits on the store.

Measured on a 2-core machine with a SQLite store: ``log_batch`` costs about
60 us a metric of pure Python, about as long as a line-fit step. A writer
*thread* would hold the GIL for that long and slow the loop by about that much, so
the writing happens in a child process (``python -m mlrepro.store.writer``). The
training thread only appends a float to an array; a sender thread in the parent
appends the new values to the run's spool (``mlrepro.store.spool``) every
``SEND_INTERVAL_S`` seconds, and the child delivers the spool to the store, retrying
with backoff while the store fails.

Wire format on the child's stdin: one JSON line (the tracking URI and the spool's
folder), then one byte each time there is something new in the spool. EOF ends the
run: the child delivers what is left and exits 0 once the store holds all of it. The
run waits for that a bounded time (``MLREPRO_STORE_WAIT_S``); what is still pending
then stays in the spool for ``mlrepro sync``.

Writers are forked by a zygote (``_Zygote``), a helper process that imported
MLflow once: a run's writer starts at once, instead of importing MLflow again on
the run's critical path. This module imports only the standard library at the top:
``prestart`` (called when a run opens, or earlier by an entry point that asks) is meant to run before
torch and MLflow are imported, so that the zygote's imports overlap the parent's.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mlrepro.store.spool import Spool

SEND_INTERVAL_S = 0.1


class _ForkedWriter:
    """A writer process forked by the zygote: what ``LossWriter`` asks of a ``Popen``, for a process
    that is not this one's child (the zygote reaps it). Its pid arrives when the zygote has forked it."""

    def __init__(self, zygote: _Zygote, stdin: IO[bytes]) -> None:
        self._zygote = zygote
        self.stdin = stdin
        self._pid: int | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        if self._pid is None:
            self._zygote.answer(self)
        return self._pid  # type: ignore[return-value]

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = 0  # its exit status is the zygote's to reap; the spool says what it delivered
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"writer {self.pid}", timeout)  # type: ignore[arg-type]
            time.sleep(0.01)
        return 0

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Zygote:
    """A helper process that imports MLflow once and forks a ready writer for each run.

    A writer spawned per run imports MLflow again (a second or more of CPU on the run's critical
    path at its end); one forked from a process that has imported it starts at once. The zygote
    never opens a store, so no connection is shared with its children. It is spawned early (by
    ``prestart``, when a run opens or an entry point asks), so its own imports overlap the job's,
    and it exits when this process closes its socket (its end)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlrepro.store.writer", "--zygote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=_child_env())
        theirs.close()
        self.socket = ours
        _open_pipes.add(ours.fileno())
        self._waiting: list[_ForkedWriter] = []  # asked for, in order, their pids not read yet
        self._answers = ours.makefile("rb")  # one reader: a second would lose what the first buffered

    def fork_writer(self, tracking_uri: str | None) -> _ForkedWriter | None:
        """Ask for a writer reading a new pipe, that opens ``tracking_uri`` (the store its run will most
        likely use) while it waits; None if the zygote is gone. Does not wait for the fork."""
        if self.process.poll() is not None:
            return None
        read_end, write_end = os.pipe()
        try:
            socket.send_fds(self.socket, [b"w" + (tracking_uri or "").encode()], [read_end])
        except OSError:
            os.close(write_end)
            return None
        finally:
            os.close(read_end)
        writer = _ForkedWriter(self, os.fdopen(write_end, "wb", buffering=0))
        _open_pipes.add(write_end)
        self._waiting.append(writer)
        return writer

    def answer(self, writer: _ForkedWriter) -> None:
        """Read forked pids, in the order they were asked for, until ``writer``'s has come."""
        while writer._pid is None:
            line = self._answers.readline()
            first = self._waiting.pop(0)
            first._pid = int(line) if line.strip() else -1
            if first._pid < 0:
                first.returncode = 1  # the zygote died before forking it: nothing was delivered

    def close(self) -> None:
        _open_pipes.discard(self.socket.fileno())
        self.socket.close()


_zygote: _Zygote | None = None
_spare: _ForkedWriter | None = None  # forked ahead, its store open, waiting for a run


def _child_env() -> dict[str, str]:
    # The child must run this very copy of mlrepro, wherever it was imported from.
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=python_path, PYTHONUNBUFFERED="1")


def _spawn() -> subprocess.Popen[bytes]:
    """A writer of its own, for where a zygote cannot fork one."""
    process = subprocess.Popen([sys.executable, "-m", "mlrepro.store.writer"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=_child_env())
    _open_pipes.add(process.stdin.fileno())  # type: ignore[union-attr]
    return process


def prestart(tracking_uri: str | None = None) -> None:
    """Start the zygote now, and have it fork the next run's writer: the zygote's import of MLflow (a
    second or two) overlaps the caller's own imports, and the writer opens the likely store
    (``MLFLOW_TRACKING_URI``) while the caller trains, not after."""
    global _zygote, _spare
    if os.environ.get("RANK", "0") != "0":
        return  # a torchrun rank other than 0 never writes to the store: rank 0 owns the run
    if not hasattr(socket, "send_fds") or not hasattr(os, "fork"):
        return  # not POSIX: each run spawns its writer
    if _zygote is None or _zygote.process.poll() is not None:
        _zygote, _spare = _Zygote(), None
    if _spare is None:
        _spare = _zygote.fork_writer(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def _adopt(tracking_uri: str) -> subprocess.Popen[bytes] | _ForkedWriter:
    """The writer forked ahead for this run (forked now if there is none), else one spawned now."""
    global _spare
    prestart(tracking_uri)
    writer, _spare = _spare, None
    if writer is not None and writer.poll() is not None:
        writer = None  # it died waiting
    return writer if writer is not None else _spawn()


def _prepare_next(tracking_uri: str) -> None:
    """Fork the next run's writer once this run's is done: opening its store (about 0.3 s of CPU)
    then overlaps what the process does between runs, not this run's start on two cores, where it
    competed with the run and its writer (0.05 to 0.1 s of a short run here). A process that
    ``mlflow run`` started holds one run: it forks none. Never raises: this run is delivered, and a
    next run that finds no writer forked ahead forks or spawns its own."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        with contextlib.suppress(OSError):
            prestart(tracking_uri)


_open_pipes: set[int] = set()


def _close_pipes_in_fork() -> None:
    """A forked child (a DataLoader worker) must not hold the writer's pipe or the zygote's socket
    open: the writer only sees the end of the run, and the zygote the end of this process, when every
    copy is closed. The raw descriptors are closed, so no buffered bytes are flushed twice."""
    for descriptor in list(_open_pipes):
        try:
            os.close(descriptor)
        except OSError:
            pass
    _open_pipes.clear()
    global _zygote, _spare
    _zygote, _spare = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_pipes_in_fork)


@atexit.register
def _release_zygote() -> None:
    if _zygote is not None:
        _zygote.close()  # EOF: the zygote exits; writers it forked finish their runs on their own


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
        self._tracking_uri = tracking_uri
        self._process = _adopt(tracking_uri)
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
    def process(self) -> subprocess.Popen[bytes] | _ForkedWriter:
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
                _prepare_next(self._tracking_uri)
                # The writer removes the spool once the store holds all of it, and only then.
                return "died" if self._spool.folder.exists() else "delivered"
            except subprocess.TimeoutExpired:
                now = self._spool.delivered()
                if now != progress:
                    progress, since = now, time.monotonic()
                elif time.monotonic() - since >= patience_s:
                    break
        self._process.kill()  # it is retrying a store that takes nothing; the spool keeps the rest
        self._process.wait()
        return "stalled"


def wait_for_exit(process: subprocess.Popen[bytes] | _ForkedWriter, timeout_s: float) -> None:
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
    import mlflow

    return mlflow.get_tracking_uri()


def ignore_in_helper_process() -> None:
    """A signal sent to the whole process group (Ctrl-C, a SIGTERM to the job's group) must not
    kill a helper before it has delivered what the run handed it; it ends when the run closes its pipe."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def zygote(descriptor: int) -> int:
    """The zygote: import what every writer needs, then fork one writer per request on the socket
    ``descriptor``, its stdin the pipe sent along; exit when the socket closes."""
    import logging

    ignore_in_helper_process()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - what a SQLite or PostgreSQL store loads
    import sqlalchemy.dialects.sqlite  # noqa: F401 - the default store's dialect

    with contextlib.suppress(ImportError):  # what opening a store loads, in the MLflow versions that have it
        import mlflow.store.tracking.sqlalchemy_workspace_store  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    from mlrepro.store import spool  # noqa: F401
    from mlrepro.store.opening import latest_schema_revision

    latest_schema_revision()  # loads the schema's migration scripts (50 ms), once, for every writer
    # What the imports made lives as long as the writers: out of the collector's sight, a
    # writer's collections do not walk MLflow's hundreds of thousands of objects each time
    # its store makes a thousand metrics (they took most of a short run's delivery).
    gc.freeze()
    channel = socket.socket(fileno=descriptor)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its writers are reaped as they exit
    while True:
        try:
            message, descriptors, _, _ = socket.recv_fds(channel, 65536, 1)
        except OSError:
            return 0
        if not message:
            return 0  # the job's process closed its end: it is over
        pid = os.fork()
        if pid == 0:
            channel.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.dup2(descriptors[0], 0)
            os.close(descriptors[0])
            if message[1:]:  # the store the run will most likely use: opened while it waits
                os.environ["MLFLOW_TRACKING_URI"] = message[1:].decode()
            status = 1
            try:
                status = main()
            finally:
                sys.stderr.flush()
                os._exit(status)
        for received in descriptors:
            os.close(received)
        channel.sendall(f"{pid}\n".encode())


def main() -> int:
    """A writer: open the likely store while no run has adopted it, read the run's header, then
    deliver its spool until the run ends and all of it is in the store."""
    import logging

    ignore_in_helper_process()  # Ctrl-C reaches the whole group; this process ends when the run closes its pipe
    # Below the training loop in the scheduler's order: on a machine with as many busy threads as
    # cores the writer waits, not the loop (the 20,000-step line fit on two cores: its loop 1.13x
    # untracked without, 1.05x with, medians of 6); a run's end, when the loop waits, is not delayed.
    os.nice(10)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
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
    status = zygote(int(sys.argv[2])) if sys.argv[1:2] == ["--zygote"] else main()
    # Every step is committed and counted in the progress file by now. A normal
    # interpreter exit with MLflow loaded (its atexit hooks, thread pools, module
    # teardown) takes about 0.4 s more, and the run waits on this process's exit:
    # leave at once. stdout is /dev/null and stderr unbuffered, so nothing is lost.
    sys.stderr.flush()
    os._exit(status)
