"""Look runs up from Python: ``load_run``, ``compare_runs`` and ``find_runs``.

The run record itself (what is stored where, and its errors) is ``mlrepro.store.record``'s.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from mlrepro.analysis.compare import RunComparison, compare_logged_runs
from mlrepro.capture.logged import LoggedRun
from mlrepro.capture.spec import AnySpec
from mlrepro.errors import SameRunError, SpecError
from mlrepro.store import keys, opening, record, search


def load_run(run_id: str, client: MlflowClient | None = None) -> LoggedRun:
    """A run's spec, environment, code and losses, by id or by a unique prefix of 8+ hex digits.

    The spec comes back typed where its job is registered in this process (the
    built-in jobs, and every spec class imported so far), and as a ``LoggedSpec``
    (job, fields, hash) where it is not; ``spec.typed()`` imports its class.
    """
    return record.read_run(client or opening.existing_store(), run_id)


def compare_runs(a: str | LoggedRun, b: str | LoggedRun, client: MlflowClient | None = None) -> RunComparison:
    """Compare two runs, given as ids or as records already loaded with ``load_run``."""
    if client is None and not (isinstance(a, LoggedRun) and isinstance(b, LoggedRun)):
        client = opening.existing_store()  # only where a run is still to be read
    run_a = a if isinstance(a, LoggedRun) else load_run(a, client)
    run_b = b if isinstance(b, LoggedRun) else load_run(b, client)
    if run_a.run_id == run_b.run_id:
        raise SameRunError(f"both ids name run {run_a.run_id}: a run compared with itself is identical by "
                           "definition; give two runs")
    return compare_logged_runs(run_a, run_b)


class RunSummary(BaseModel):
    """One line of ``mlrepro find``: which run, when, what it ran and what it was found to equal."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    experiment_id: str
    run_name: str | None
    status: str
    start_time: datetime
    job: str | None
    entry: str | None  # the module or script that ran the job
    spec_hash: str | None
    env_hash: str | None
    loss_digest: str | None
    verdicts: dict[str, str]  # other run id -> verdict, from `compare --log`


_HASH = re.compile(r"^[0-9a-f]{1,64}$")


def find_runs(
    *,
    spec_hash: str | None = None,
    spec: AnySpec | None = None,
    job: str | None = None,
    params: dict[str, str] | None = None,
    env_hash: str | None = None,
    loss_digest: str | None = None,
    experiment: str | None = None,
    max_results: int = 1000,
    client: MlflowClient | None = None,
) -> list[RunSummary]:
    """mlrepro runs matching every criterion given, newest first; all of them when none is given.

    ``spec`` finds runs of exactly that spec (by its hash). ``job`` with ``params``
    finds runs of a job whose spec class this process does not have, by the params
    as logged (text, compared exactly). ``experiment`` is a name or an id (default:
    every active experiment).
    """
    if spec is not None and spec_hash is not None:
        raise SpecError("find runs by a spec or by a spec hash, not both")
    criteria = {keys.TAG_SPEC_HASH: spec.hash if spec is not None else spec_hash,
                keys.TAG_ENV_HASH: env_hash, keys.TAG_LOSS_DIGEST: loss_digest}
    for tag, value in criteria.items():
        if value is not None and not _HASH.match(value):
            raise SpecError(f"{tag.removeprefix(keys.TAG_PREFIX)}: must be a hex hash as mlrepro logs it (got {value!r})")
    tags = {tag: value for tag, value in criteria.items() if value is not None}
    if job is not None:
        tags[keys.TAG_JOB] = job
    runs = search.search(client or opening.existing_store(), tags, params or {}, experiment, max_results)
    return [_summary(run) for run in runs]


def _summary(run: Run) -> RunSummary:
    tags = run.data.tags
    return RunSummary(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        run_name=run.info.run_name,
        status=record.effective_status(run.info.status, tags),
        start_time=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
        job=tags.get(keys.TAG_JOB),
        entry=tags.get(f"{keys.ENV_TAG_PREFIX}code.entry"),
        spec_hash=tags.get(keys.TAG_SPEC_HASH),
        env_hash=tags.get(keys.TAG_ENV_HASH),
        loss_digest=tags.get(keys.TAG_LOSS_DIGEST),
        verdicts=record.verdicts_from_tags(tags),
    )
