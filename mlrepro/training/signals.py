"""SIGINT and SIGTERM end a run as KILLED, after every step handed over is saved.

While a run trains, the first SIGINT or SIGTERM raises ``RunInterrupted`` in the
main thread, wherever the loop is; the run then delivers its steps, writes the exact
record and ends KILLED. A second signal during that saving (``mlflow run`` answers
Ctrl-C by sending SIGTERM to the job it started) is noted and does not cut it short.
A signal that arrives while the run is being saved at its normal end is raised once
the saving is done, so the run still ends KILLED and nothing is half-written. One that
arrives after the loop's last step was spooled, while the store takes the spool, finds the
run complete: it stays FINISHED (compare reads it whole, which it is), and the signal is
raised once delivery is done, so the process still ends as the signal asks.

Python runs signal handlers in the main thread only; a run opened in another thread
leaves the process's handlers as they are.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlrepro.store.delivery import Pending

HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A run was stopped by a signal. A ``KeyboardInterrupt``, so ``except Exception`` in a
    training loop does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.run_id: str | None = None  # set by start_run: which run it ended, after how many steps
        self.steps = 0
        self.pending: Pending | None = None  # what of it still waits in the spool (mlrepro.store.spool.Pending), if anything
        self.status = "KILLED"  # FINISHED where the signal came after the run's last step was saved
        super().__init__(signal.Signals(signum).name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal."""
        return 128 + self.signum


class Interruption:
    """The signal state of one run: what arrived, and whether it may still be raised."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raising = True
        self.previous: dict[int, object] = {}  # the handlers to put back when the run is over

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
            # The loop's DataLoader iterator is shut down as the exception leaves the loop, before
            # start_run can act: its workers' deaths must already be no news then.
            self._quiet_children()
        if first and self._raising:
            self._raising = False  # once: the saving that follows must not be interrupted
            raise RunInterrupted(signum)

    def saving(self) -> None:
        """From here on a signal is noted, not raised: the run is saving what it has."""
        self._raising = False
        self._quiet_children()

    def _quiet_children(self) -> None:
        """DataLoader workers killed with the group make torch's SIGCHLD handler raise
        "DataLoader worker ... is killed"; once the run is stopping, that is no news."""
        if threading.current_thread() is threading.main_thread() and signal.SIGCHLD not in self.previous:
            self.previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _default_handlers_in_forked_child() -> None:
    """A process forked while a run trains (a DataLoader worker) is not the run: a signal must not
    raise ``RunInterrupted`` there. Its own defaults come back (torch's worker then sets its own
    SIGTERM handler): a worker killed with the group dies at once, instead of unwinding as if it
    were the run, with its threads still serving the parent."""
    for signum in HANDLED:
        handler = signal.getsignal(signum)
        if isinstance(getattr(handler, "__self__", None), Interruption):
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_handlers_in_forked_child)


@contextmanager
def interruptible() -> Iterator[Interruption]:
    """SIGINT and SIGTERM raise ``RunInterrupted`` inside the block (main thread only)."""
    state = Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    state.previous.update({signum: signal.getsignal(signum) for signum in HANDLED})
    for signum in HANDLED:
        signal.signal(signum, state._handle)
    try:
        yield state
    finally:
        for signum, handler in state.previous.items():
            signal.signal(signum, handler)
