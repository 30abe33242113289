"""The run record: run ids by prefix, environment facts under their own tag prefix, old runs still read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow
import pytest

from mlrepro import keys, load_run, start_run
from mlrepro.errors import RunNotFoundError
from mlrepro.record import environment_from_tags, resolve_run_id
from mlrepro.spec import LineFitSpec


def test_a_unique_prefix_of_eight_or_more_digits_names_a_run(tmp_path: Path, store: str) -> None:
    client = mlflow.MlflowClient()
    a, b = (client.create_run("0").info.run_id for _ in range(2))
    # Give b the first ten digits of a, as two runs of a big store may share them.
    twin = a[:10] + b[10:]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("PRAGMA foreign_keys = OFF")
        for table in ("runs", "tags"):
            db.execute(f"UPDATE {table} SET run_uuid = ? WHERE run_uuid = ?", (twin, b))

    assert resolve_run_id(client, a) == a
    assert resolve_run_id(client, twin[:11] if twin[10] != a[10] else twin) == twin
    with pytest.raises(RunNotFoundError, match=f"'{a[:8]}' is the start of more than one run id; give more digits"):
        resolve_run_id(client, a[:8])
    with pytest.raises(RunNotFoundError, match="no run 'ffffffff0'"):
        resolve_run_id(client, "ffffffff0")
    assert resolve_run_id(client, "abc") == "abc"  # too short to be a prefix: the store says it is no run


def test_environment_facts_have_a_tag_prefix_of_their_own_and_old_runs_still_read(store: str) -> None:
    with start_run(LineFitSpec(steps=2)) as run:
        run.log_loss(1.0)
        run.log_loss(0.5)
    tags = mlflow.MlflowClient().get_run(run.run_id).data.tags
    facts = environment_from_tags(tags)
    assert facts == run.environment.facts  # nothing but the facts: no bookkeeping tag among them
    assert keys.TAG_SPEC_HASH not in {f"{keys.TAG_PREFIX}{fact}" for fact in facts}

    # A run logged before mlrepro 0.2 carried its facts as mlrepro.<fact>, beside the bookkeeping tags.
    old = {"mlrepro.torch.version": "2.13.0", "mlrepro.git.commit": "abc", keys.TAG_SPEC_HASH: "0123",
           keys.TAG_LOSS_DIGEST: "4567", f"{keys.TAG_VERDICT_PREFIX}{run.run_id}": "identical bit for bit (2 steps)"}
    assert environment_from_tags(old) == {"torch.version": "2.13.0", "git.commit": "abc"}


def test_a_loaded_run_carries_its_code_record(store: str) -> None:
    with start_run(LineFitSpec(steps=1)) as run:
        run.log_loss(1.0)
    logged = load_run(run.run_id)
    assert logged.code is not None and logged.code.entry == logged.environment["code.entry"]
    assert len(logged.losses) == 1 and list(logged.losses) == [(0, 1.0)]  # len() and iteration
