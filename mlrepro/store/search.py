"""Finding runs: by the tags and params mlrepro writes, in one experiment or in every active one."""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from mlrepro.errors import (
    ExperimentNotFoundError,
    redacted_uri,
)
from mlrepro.store import keys
from mlrepro.store.failures import is_missing, store_errors, store_failures


def search(
    client: MlflowClient, criteria: Mapping[str, str], params: Mapping[str, str], experiment: str | None,
    max_results: int,
) -> list[Run]:
    """mlrepro runs whose tags and params equal ``criteria`` and ``params``, newest first."""
    clauses = [f"tags.`{tag}` = '{value}'" for tag, value in criteria.items()]
    clauses += [f"params.`{name}` = '{_quoted(value)}'" for name, value in params.items()]
    if not clauses:
        clauses.append(f"tags.`{keys.TAG_SPEC_HASH}` LIKE '%'")
    with store_errors(client):
        experiment_ids = _experiment_ids(client, experiment)
        if not experiment_ids:
            return []
        return client.search_runs(experiment_ids, filter_string=" and ".join(clauses),
                                  order_by=["attributes.start_time DESC"], max_results=max_results)


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    found = client.get_experiment_by_name(experiment)
    if found is None and experiment.isdigit():
        try:
            found = client.get_experiment(experiment)
        except store_failures() as err:
            if not is_missing(err):  # RESOURCE_DOES_NOT_EXIST: no such experiment, said below
                raise
            found = None
    if found is None:
        raise ExperimentNotFoundError(f"no experiment named or numbered {experiment!r} in {redacted_uri(client.tracking_uri)}")
    return [found.experiment_id]
