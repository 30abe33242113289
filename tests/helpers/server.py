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

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
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
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
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
