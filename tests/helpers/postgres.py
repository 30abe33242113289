"""Debian's PostgreSQL for tests and the benchmark: a throwaway cluster on loopback, one database per store.

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user that
Debian's package creates, in a folder of its own under the system's temporary folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers.server import free_port


def postgres_bin() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, or in Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class Postgres:
    """A PostgreSQL cluster on 127.0.0.1, trusting local connections, removed by ``stop``."""

    def __init__(self) -> None:
        bin_folder = postgres_bin()
        if bin_folder is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bin_folder
        self.folder = Path(tempfile.mkdtemp(prefix="mlrepro-postgres-"))
        self.port = free_port()
        self.user = "mlrepro"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.folder, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, cwd=self.folder)

    def start(self) -> None:
        data = self.folder / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        # Another process may bind the chosen port before PostgreSQL does (another suite on this
        # machine): then it is started again on another free port.
        for attempt in range(3):
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "postgres.log"), "-w",
                          "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                                "-c max_connections=200", "start")
                return
            except subprocess.CalledProcessError:
                log = self.folder / "postgres.log"
                if attempt == 2 or "could not bind" not in (log.read_text() if log.exists() else ""):
                    raise
                self.port = free_port()

    def create_database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URI for MLflow (psycopg 3)."""
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
