"""The example jobs, one folder each; MLproject runs them as ``python -m projects.<job>``."""

import importlib.util
import os
import sys

# `mlflow run .` without `--env-manager local` starts the jobs in a new, empty virtualenv: they
# would stop in a ModuleNotFoundError traceback. Looked up, not imported: `--help` stays instant.
_NEEDED = ("click", "pydantic", "yaml", "mlflow", "torch")
_missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _missing:
    where = ("`mlflow run` made a new environment for it: run with `mlflow run . --env-manager local` in the "
             "environment where mlrepro is installed (pip install -e .)") if os.environ.get("MLFLOW_RUN_ID") \
        else "install mlrepro first (pip install -e .)"
    sys.stderr.write(f"mlrepro: error: this Python ({sys.executable}) lacks {', '.join(_missing)}; {where}\n")
    raise SystemExit(2)

# Each job's training function, imported only when it is the one being run.
TRAINERS = {
    "linefit": "projects.linefit.train:train",
    "cifar10": "projects.cifar10.train:train",
}
