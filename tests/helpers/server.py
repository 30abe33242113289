"""A real `mlflow server` on loopback for tests: started, stopped and started again on the same port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class PortTakenError(RuntimeError):
    """The port chosen for a server was bound by another process before the server could bind it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a SQLite backend and served artifacts, all under ``folder``.

    ``stop`` and ``start`` again keep the port and the stores: what a team sees when its
    tracking server is restarted."""

    def __init__(self, folder: Path, backend_uri: str | None = None, workers: int = 2) -> None:
        self.folder = folder
        self.port = free_port()
        self.backend_uri = backend_uri or f"sqlite:///{folder / 'server.db'}"
        self.artifacts = folder / "served-artifacts"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "server.log"
        self.workers = workers
        self.started_once = False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> None:
        """Start the server and wait until it answers. The first start takes another free port when
        the one chosen was taken meanwhile (another suite on the machine may have just bound it); a
        restart keeps its port, as a team's server does."""
        for attempt in range(3):
            try:
                self._start(timeout_s)
                return
            except PortTakenError:
                if self.started_once or attempt == 2:
                    raise
                self.port = free_port()

    def _start(self, timeout_s: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        logged_before = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", self.backend_uri, "--artifacts-destination", str(self.artifacts),
                 "--workers", str(self.workers)],
                cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, MLFLOW_TRACKING_URI=""),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            said = self.log.read_bytes()[logged_before:].decode(errors="replace")
            if self.process.poll() is not None:
                if "address already in use" in said.lower():
                    raise PortTakenError(f"port {self.port} is taken")
                raise RuntimeError(f"mlflow server exited: {said[-3000:]}")
            # Ready when this server logged the answer: a 200 alone may come from another process
            # that holds the port (this one then exits, and the loop above sees why).
            if '"GET /health HTTP/1.1" 200' in said:
                self.started_once = True
                return
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).close()
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not answer within {timeout_s} s: {self.log.read_text()[-3000:]}")

    def stop(self, crash: bool = False) -> None:
        """Stop the server and every worker it started (its own session). SIGTERM lets it finish
        what its open connections ask, and a client that keeps asking on a kept-alive connection
        keeps it serving; ``crash`` kills it at once, as a machine or network that goes away does."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if crash else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Its workers die with it; the port must be free before a test counts on it being closed.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)
