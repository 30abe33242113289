"""Per-step losses to MLflow from a separate process, so the training loop never waits on the store.

Measured on a 2-core machine with a SQLite store: ``log_batch`` costs about
60 us a metric of pure Python, about as long as a line-fit step. A writer
*thread* would hold the GIL for that long and slow the loop by about that much, so
the writing happens in a child process (``mlrepro.store.writer_process``). The
training thread only appends a float to an array; a sender thread in the parent
appends the new values to the run's spool (``mlrepro.store.spool``) every
``SEND_INTERVAL_S`` seconds, and the child delivers the spool to the store, retrying
with backoff while the store fails.

Wire format on the child's stdin: one JSON line (the tracking URI and the spool's
folder), then one byte each time there is something new in the spool. EOF ends the
run: the child delivers what is left and exits 0 once the store holds all of it. The
run waits for that a bounded time (``MLREPRO_STORE_WAIT_S``); what is still pending
then stays in the spool for ``mlrepro sync``.

Writers are forked by a zygote (``mlrepro.store.zygote``), which imported MLflow once. This module
imports only the standard library at the top.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time
from array import array
from typing import IO, TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mlrepro.store.spool import Spool

from mlrepro.store.zygote import ForkedWriter, adopt, open_pipes, prepare_next

SEND_INTERVAL_S = 0.1




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
        self._process = adopt(tracking_uri)
        self._stdin: IO[bytes] = self._process.stdin  # type: ignore[assignment]
        self._awake = True
        # The URI goes through the pipe, credentials and all; the spool keeps it without them.
        header = {"tracking_uri": tracking_uri, "spool": str(spool.folder)}
        self._wake((json.dumps(header) + "\n").encode())
        os.set_blocking(self._stdin.fileno(), False)  # a writer that lags never blocks the run
        open_pipes.update(spool.descriptors)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="mlrepro-loss-sender", daemon=True)
        self._sender.start()

    @property
    def process(self) -> subprocess.Popen[bytes] | ForkedWriter:
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
        open_pipes.discard(self._stdin.fileno())
        for descriptor in self._spool.descriptors:
            open_pipes.discard(descriptor)
        try:
            self._stdin.close()
        except OSError:
            pass
        progress, since = self._spool.delivered(), time.monotonic()
        while True:
            try:
                wait_for_exit(self._process, min(0.5, patience_s))
                prepare_next(self._tracking_uri)
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


def wait_for_exit(process: subprocess.Popen[bytes] | ForkedWriter, timeout_s: float) -> None:
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
