"""Per-step losses to MLflow from a separate process, so the training loop never waits on the store.

Measured on a 2-core machine with a SQLite store: ``log_batch`` costs about
60 us a metric of pure Python, about as long as a line-fit step. A writer
*thread* would hold the GIL for that long and slow the loop by about that much, so
the writing happens in a child process (``python -m mlrepro.writer``). The
training thread only appends a float to an array; a sender thread in the parent
ships new values to the child through a pipe every ``SEND_INTERVAL_S`` seconds
(blocking pipe writes release the GIL).

Wire format on the child's stdin: one JSON line (tracking URI, run id, metric,
progress file, first step), then frames of an 8-byte little-endian count followed by that
many float64 values, for steps first_step, first_step + 1, ... in order. EOF ends the run. The
child writes how many steps it has logged to the progress file after each
batch; whatever it did not log, the parent logs itself at the end.

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
from array import array
from pathlib import Path
from typing import IO, Any

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
    """The parent's end: ships the values of a growing ``array('d')`` to the writer process."""

    def __init__(
        self, values: array, tracking_uri: str, run_id: str, metric: str, progress: Path, first_step: int = 0
    ) -> None:
        self._values = values
        self._progress = progress
        self._sent = 0
        self._failed = False
        self._process = _adopt()
        self._stdin: IO[bytes] = self._process.stdin  # type: ignore[assignment]
        header = {"tracking_uri": tracking_uri, "run_id": run_id, "metric": metric, "progress": str(progress),
                  "first_step": first_step}
        self._write((json.dumps(header) + "\n").encode())
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="mlrepro-loss-sender", daemon=True)
        self._sender.start()

    def _write(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._stdin.write(data)
            self._stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._failed = True  # the child is gone; close() logs what it missed

    def _send_pending(self) -> None:
        end = len(self._values)
        if end > self._sent:
            chunk = self._values[self._sent : end]
            self._write((end - self._sent).to_bytes(8, "little") + chunk.tobytes())
            self._sent = end

    def _send_loop(self) -> None:
        while not self._closing.wait(SEND_INTERVAL_S):
            with self._lock:
                self._send_pending()

    def send_now(self) -> None:
        """Ship what is pending without waiting for the next interval."""
        with self._lock:
            self._send_pending()

    def close(self, timeout_s: float = 600.0) -> int:
        """Send the rest, wait for the child to log it; returns how many steps it logged."""
        self._closing.set()
        self._sender.join()
        self._send_pending()
        _open_pipes.discard(self._stdin.fileno())
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            wait_for_exit(self._process, timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        return read_progress(self._progress)


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


def read_progress(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


# --- the child process ---------------------------------------------------------


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


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

    from mlrepro.record import write_loss_metrics

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
    progress = Path(config["progress"])
    logged = 0
    while True:
        head = _read_exact(stdin, 8)
        if len(head) < 8:
            break  # EOF: the run ended (or the parent died); everything received is logged
        payload = _read_exact(stdin, int.from_bytes(head, "little") * 8)
        values = array("d")
        values.frombytes(payload[: len(payload) - len(payload) % 8])
        write_loss_metrics(client, config["run_id"], config["metric"], values, config.get("first_step", 0) + logged)
        logged += len(values)
        temporary = progress.with_suffix(".tmp")
        temporary.write_text(str(logged))
        os.replace(temporary, progress)
    return 0


if __name__ == "__main__":
    status = main()
    # Every step is committed and counted in the progress file by now. A normal
    # interpreter exit with MLflow loaded (its atexit hooks, thread pools, module
    # teardown) takes about 0.4 s more, and the run waits on this process's exit:
    # leave at once. stdout is /dev/null and stderr unbuffered, so nothing is lost.
    sys.stderr.flush()
    os._exit(status)
