"""Resumed runs in the store: the tags that tie a run to the one it continues, and the chain they
make, followed back with a cycle check and a depth limit, since anyone who can log a run can write them."""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.tracking import MlflowClient

from mlrepro.capture.losses import LossSeries
from mlrepro.errors import DamagedRecordError
from mlrepro.store import keys
from mlrepro.store.failures import store_errors

# The longest chain of resumed runs followed back to its first run: a run resumed 100 times over is
# far beyond use; a longer chain is a forged record.
MAX_RESUME_CHAIN = 100


def write_resume_links(client: MlflowClient, run_id: str, resumed_from: str, step: int) -> None:
    """Tie a resumed run to the run it continues, both ways."""
    with store_errors(client, run_id):
        client.set_tag(run_id, keys.TAG_RESUMED_FROM, resumed_from)
        client.set_tag(run_id, keys.TAG_RESUMED_AT_STEP, str(step))
        client.set_tag(resumed_from, keys.TAG_RESUMED_BY, run_id)


def check_resume_chain(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Follow ``mlrepro.resumed_from`` back to the first run by the tags alone, before any artifact is
    read: a chain that comes back to a run it passed, or runs past ``MAX_RESUME_CHAIN``, is forged."""
    chain, current = [run_id], tags.get(keys.TAG_RESUMED_FROM)
    while current:
        if current in chain:
            links = " -> ".join(run[:8] for run in [*chain, current])
            raise DamagedRecordError(f"run {run_id}: its {keys.TAG_RESUMED_FROM} tags go round in a cycle ({links}); "
                                     "the record is damaged or forged")
        if len(chain) > MAX_RESUME_CHAIN:
            raise DamagedRecordError(f"run {run_id}: its {keys.TAG_RESUMED_FROM} tags go back more than "
                                     f"{MAX_RESUME_CHAIN} runs; the record is damaged or forged")
        chain.append(current)
        current = client.get_run(current).data.tags.get(keys.TAG_RESUMED_FROM)


def resumed_at_step(run_id: str, tags: Mapping[str, str], losses: LossSeries) -> int:
    """The step a resumed run's own losses start at, from its tag; a value that is no step is damage."""
    text = tags.get(keys.TAG_RESUMED_AT_STEP)
    if text is None:
        return int(losses.steps[0]) if len(losses) else 0
    if not text.isdigit():
        raise DamagedRecordError(f"run {run_id}: its tag {keys.TAG_RESUMED_AT_STEP} is {text[:40]!r}, not a step; "
                                 "the record is damaged or forged")
    return int(text)
