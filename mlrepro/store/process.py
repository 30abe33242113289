"""Which process runs a run, and whether it is still there.

MLflow leaves a run killed with SIGKILL (or lost with its machine) RUNNING for
ever: nothing was left to tell the store. A run records the host, the pid and
the pid's start time (so a pid reused by another process does not pass for it);
a later command on the same host can then tell a live run from an orphan.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

Liveness = Literal["alive", "gone", "unknown"]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: the fields after it are counted from its end.
    return stat.rsplit(")", 1)[1].split()[19]


def identity() -> str:
    """This process as ``host/boot id/pid/start ticks``: what a run records as its owner."""
    return f"{socket.gethostname()}/{_boot_id()}/{os.getpid()}/{_start_ticks(os.getpid()) or ''}"


def liveness(recorded: str | None) -> Liveness:
    """Whether the process a run recorded still runs: known only on the host that ran it."""
    if not recorded:
        return "unknown"
    try:
        host, boot, pid_text, ticks = recorded.split("/")
        pid = int(pid_text)
    except ValueError:
        return "unknown"
    if host != socket.gethostname():
        return "unknown"
    if boot and boot != _boot_id():
        return "gone"  # the machine restarted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # it exists, as another user
    now = _start_ticks(pid)
    if ticks and now is not None and now != ticks:
        return "gone"  # the pid now belongs to another process
    return "alive"
