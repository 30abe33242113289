"""The writers' zygote: a helper process that imported MLflow once and forks a ready writer for each
run, so a run's writer starts at once instead of importing MLflow again on the run's critical path.

The job's side (``prestart``, ``adopt``) holds one writer forked ahead, its store already open. Nothing
starts on import: a run starts the zygote when it opens, or an entry point earlier with ``prestart()``,
before it imports torch, so that the zygote's imports overlap its own. Only the standard library is
imported at the top."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from mlrepro.store.writer_process import deliver_run, ignore_in_helper_process


class ForkedWriter:
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
            [sys.executable, "-m", "mlrepro.store.zygote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=_child_env())
        theirs.close()
        self.socket = ours
        open_pipes.add(ours.fileno())
        self._waiting: list[ForkedWriter] = []  # asked for, in order, their pids not read yet
        self._answers = ours.makefile("rb")  # one reader: a second would lose what the first buffered

    def fork_writer(self, tracking_uri: str | None) -> ForkedWriter | None:
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
        writer = ForkedWriter(self, os.fdopen(write_end, "wb", buffering=0))
        open_pipes.add(write_end)
        self._waiting.append(writer)
        return writer

    def answer(self, writer: ForkedWriter) -> None:
        """Read forked pids, in the order they were asked for, until ``writer``'s has come."""
        while writer._pid is None:
            line = self._answers.readline()
            first = self._waiting.pop(0)
            first._pid = int(line) if line.strip() else -1
            if first._pid < 0:
                first.returncode = 1  # the zygote died before forking it: nothing was delivered

    def close(self) -> None:
        open_pipes.discard(self.socket.fileno())
        self.socket.close()


_zygote: _Zygote | None = None


_spare: ForkedWriter | None = None  # forked ahead, its store open, waiting for a run


def _child_env() -> dict[str, str]:
    # The child must run this very copy of mlrepro, wherever it was imported from.
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds mlrepro/
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=python_path, PYTHONUNBUFFERED="1")


def _spawn() -> subprocess.Popen[bytes]:
    """A writer of its own, for where a zygote cannot fork one."""
    process = subprocess.Popen([sys.executable, "-m", "mlrepro.store.writer_process"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=_child_env())
    open_pipes.add(process.stdin.fileno())  # type: ignore[union-attr]
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


def adopt(tracking_uri: str) -> subprocess.Popen[bytes] | ForkedWriter:
    """The writer forked ahead for this run (forked now if there is none), else one spawned now."""
    global _spare
    prestart(tracking_uri)
    writer, _spare = _spare, None
    if writer is not None and writer.poll() is not None:
        writer = None  # it died waiting
    return writer if writer is not None else _spawn()


def prepare_next(tracking_uri: str) -> None:
    """Fork the next run's writer once this run's is done: opening its store (about 0.3 s of CPU)
    then overlaps what the process does between runs, not this run's start on two cores, where it
    competed with the run and its writer (0.05 to 0.1 s of a short run here). A process that
    ``mlflow run`` started holds one run: it forks none. Never raises: this run is delivered, and a
    next run that finds no writer forked ahead forks or spawns its own."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        with contextlib.suppress(OSError):
            prestart(tracking_uri)


open_pipes: set[int] = set()


def _close_pipes_in_fork() -> None:
    """A forked child (a DataLoader worker) must not hold the writer's pipe or the zygote's socket
    open: the writer only sees the end of the run, and the zygote the end of this process, when every
    copy is closed. The raw descriptors are closed, so no buffered bytes are flushed twice."""
    for descriptor in list(open_pipes):
        try:
            os.close(descriptor)
        except OSError:
            pass
    open_pipes.clear()
    global _zygote, _spare
    _zygote, _spare = None, None


@atexit.register
def _release_zygote() -> None:
    if _zygote is not None:
        _zygote.close()  # EOF: the zygote exits; writers it forked finish their runs on their own


def zygote(descriptor: int) -> int:
    """The zygote: import what every writer needs, then fork one writer per request on the socket
    ``descriptor``, its stdin the pipe sent along; exit when the socket closes."""
    ignore_in_helper_process()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - what a SQLite or PostgreSQL store loads
    import sqlalchemy.dialects.sqlite  # noqa: F401 - the default store's dialect

    with contextlib.suppress(ImportError):  # what opening a store loads, in the MLflow versions that have it
        import mlflow.store.tracking.sqlalchemy_workspace_store  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    # what every writer imports, imported once here, before the zygote forks them
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
                status = deliver_run()
            finally:
                sys.stderr.flush()
                os._exit(status)
        for received in descriptors:
            os.close(received)
        try:
            channel.sendall(f"{pid}\n".encode())
        except OSError:  # the job is gone (a signal during its start-up): the writer ends on its pipe's EOF
            return 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_pipes_in_fork)


if __name__ == "__main__":
    status = zygote(int(sys.argv[1]))
    sys.stderr.flush()
    os._exit(status)  # as a writer does: no interpreter teardown with MLflow loaded
