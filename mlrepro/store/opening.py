"""Opening a tracking store: a SQLite file migrated once to the installed MLflow's schema (under
a lock, so parallel jobs do not race), and a run id found from the prefix a user typed."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from mlrepro.errors import (
    RunNotFoundError,
    TrackingError,
    redacted_uri,
)
from mlrepro.store.failures import store_errors

# Run ids as MLflow makes them, and the shortest prefix a command accepts for one.
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


_RUN_ID_PREFIX = re.compile(r"^[0-9a-f]{8,31}$")


MIN_PREFIX = 8


@cache
def latest_schema_revision() -> str:
    """The installed MLflow's newest schema revision, read once a process: finding it loads every
    migration script (about 50 ms), and a process that starts many runs asks at each."""
    # alembic and the migration scripts: only when asked
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def sqlite_schema_is_current(path: Path) -> bool:
    """Whether MLflow would open this SQLite file without migrating it; read-only, never raises."""
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            connection.close()
        return rows == [(latest_schema_revision(),)]
    except Exception:  # missing file, a schema half made, another MLflow: leave it to the run
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:  # POSIX only
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    try:
        lock = open(path, "a")
    except OSError:  # no folder for the store: MLflow's own error says so, once it opens it
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ready_store(uri: str) -> MlflowClient:
    """A client of the store at ``uri``, whose schema is made in one process at a time.

    MLflow migrates a SQLite file's schema in every process that opens it first; two at
    once fail ("duplicate column"), so jobs started together on a new file would crash.
    The schema is made under a file lock beside the store, once. The client is made
    inside the lock too: making one opens its store."""
    if not uri.startswith("sqlite:///") or sqlite_schema_is_current(Path(uri[len("sqlite:///"):])):
        return MlflowClient(uri)
    path = Path(uri[len("sqlite:///"):])
    with _locked(path.with_name(path.name + ".lock")):
        client = MlflowClient(uri)
        with store_errors(client):
            client.search_experiments(max_results=1)
    return client


def local_store_path(uri: str) -> Path | None:
    """Where a store on this machine lies (a SQLite file, a file store's folder); None for a server
    or a database elsewhere, which only answering can show to exist."""
    if uri.startswith("sqlite:///"):
        return None if ":memory:" in uri else Path(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    return Path(uri) if "://" not in uri else None


def existing_store(uri: str | None = None) -> MlflowClient:
    """A client of a store that exists, for what only reads runs or delivers to one: a SQLite file or
    a file store that is not there is refused, never made (MLflow would create an empty, migrated store)."""
    uri = uri or mlflow.get_tracking_uri()
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise TrackingError(f"no tracking store at {path.resolve()}: set MLFLOW_TRACKING_URI to the store "
                            "that holds the runs, or run from the folder whose mlflow.db does")
    # A SQLite file a job has only just made may have no schema yet: reads wait for it, under the same lock.
    return ready_store(uri)


def resolve_run_id(client: MlflowClient, text: str, context: str = "") -> str:
    """A full run id for ``text``: a run id, or a unique prefix of 8 or more hex digits
    (the form ``find`` and ``show`` print)."""
    if re.fullmatch(r"[0-9a-f]{1,7}", text):
        raise RunNotFoundError(f"{context}{text!r} is too short to name a run: give at least 8 digits of its id")
    if _RUN_ID.match(text) or not _RUN_ID_PREFIX.match(text):
        return text  # a full id, or not a prefix: the store says whether such a run exists
    with store_errors(client):
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        found = client.search_runs(experiments, filter_string=f"attributes.run_id LIKE '{text}%'",
                                   run_view_type=ViewType.ALL, max_results=2) if experiments else []
    if not found:
        raise RunNotFoundError(f"{context}no run {text!r} in the tracking store {redacted_uri(client.tracking_uri)}")
    if len(found) > 1:
        raise RunNotFoundError(f"{context}{text!r} is the start of more than one run id; give more digits")
    return found[0].info.run_id
