"""The MLflow plugin: environment tags on every MLflow run, even in scripts that never import mlrepro.

Registered through the ``mlflow.run_context_provider`` entry point. MLflow
loads this module while ``import mlflow`` is still running, so it imports nothing
heavy at the top; the collectors (and torch) are imported when a run starts.

MLflow does not ask providers for runs that ``mlflow run`` creates (its launcher
creates them with the client API); mlrepro's own entry points tag those runs
themselves.
"""

from __future__ import annotations

import warnings

from mlflow.tracking.context.abstract_context import RunContextProvider


class EnvironmentRunContext(RunContextProvider):
    """Adds mlrepro's environment record as ``mlrepro.*`` tags; never blocks a run."""

    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        try:
            from mlrepro.environment import capture_environment, environment_tags

            return environment_tags(capture_environment())
        except Exception as err:  # a broken record must never stop someone's run
            warnings.warn(f"mlrepro could not record the environment of this run: {err}", stacklevel=2)
            return {}
