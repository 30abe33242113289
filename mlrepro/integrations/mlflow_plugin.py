"""The MLflow plugin: environment tags on every MLflow run, even in scripts that never import mlrepro.

Registered through the ``mlflow.run_context_provider`` entry point. MLflow
loads this module while ``import mlflow`` is still running, so it imports nothing
heavy at the top; the collectors (and torch) are imported when a run starts.

MLflow does not ask providers for runs that ``mlflow run`` creates (its launcher
creates them with the client API); mlrepro's own entry points tag those runs
themselves.
"""

from __future__ import annotations

import sys
import warnings

from mlflow.tracking.context.abstract_context import RunContextProvider

from mlrepro.capture.own_run import is_own_run


class EnvironmentRunContext(RunContextProvider):
    """Adds mlrepro's environment record as ``mlrepro.environment.*`` tags; never blocks a run."""

    def in_context(self) -> bool:
        # Cheap on purpose: MLflow asks at every start_run. A process that has not imported
        # torch trains nothing mlrepro describes, and must not pay for importing it.
        return "torch" in sys.modules and not is_own_run()

    def tags(self) -> dict[str, str]:
        try:
            # MLflow loads this module while it is imported: the collectors (and torch) only when a run starts
            from mlrepro.capture.code import capture_code
            from mlrepro.capture.environment import capture_environment
            from mlrepro.store.record import environment_tags

            return environment_tags(capture_environment(extra=capture_code().facts()))
        except Exception as err:  # a broken record must never stop someone's run
            warnings.warn(f"mlrepro could not record the environment of this run: {err}", stacklevel=2)
            return {}
