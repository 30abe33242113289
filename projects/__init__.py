"""The example jobs, one folder each; MLproject runs them as ``python -m projects.<job>``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def _trainer(module: str) -> Callable[[], Callable[[Any, Any], None]]:
    """Import a job only when it is the one being run."""
    return lambda: import_module(module).train


TRAINERS = {
    "linefit": _trainer("projects.linefit.train"),
    "cifar10": _trainer("projects.cifar10.train"),
}
