"""Whether mlrepro's own ``start_run`` is opening the current MLflow run.

The MLflow plugin adds environment tags to every run a script opens; inside mlrepro's
``start_run`` it must stay out, since mlrepro records the environment itself, once.
The flag lives here, below both, so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_own_run: ContextVar[bool] = ContextVar("mlrepro_own_run", default=False)


@contextmanager
def recording_own_run() -> Iterator[None]:
    """Around ``mlflow.start_run`` in mlrepro: the plugin stays out of a run mlrepro records."""
    token = _own_run.set(True)
    try:
        yield
    finally:
        _own_run.reset(token)


def is_own_run() -> bool:
    """True while mlrepro's ``start_run`` opens a run in this context."""
    return _own_run.get()
