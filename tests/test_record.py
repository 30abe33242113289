"""The run record: run ids by prefix, environment facts under their own tag prefix, old runs still read."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlrepro import load_run, start_run
from mlrepro.errors import (
    CheckpointError,
    DamagedRecordError,
    RunNotFoundError,
    SpecError,
)
from mlrepro.store import keys
from mlrepro.store.opening import resolve_run_id
from mlrepro.store.record import environment_from_tags
from projects.linefit.spec import LineFitSpec
from tests.conftest import job_env


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
    with pytest.raises(RunNotFoundError, match="'abc' is too short to name a run: give at least 8 digits"):
        resolve_run_id(client, "abc")
    assert resolve_run_id(client, "not-hex") == "not-hex"  # no prefix at all: the store says it is no run


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


def artifact_folder(run_id: str) -> Path:
    return Path(mlflow.MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://")) / "mlrepro"


@pytest.mark.parametrize(
    ("artifact", "damage", "message"),
    [
        ("losses.npz", lambda data: data[: len(data) // 2], "mlrepro/losses.npz is damaged"),
        ("losses.npz", lambda data: b"garbage" * 10, "mlrepro/losses.npz is damaged"),
        ("losses.npz", None, "mlrepro/losses.npz is damaged: it holds no 'values'"),
        ("spec.json", lambda data: data[:-5], "mlrepro/spec.json is damaged: not JSON"),
        ("spec.json", lambda data: b'["not", "a", "spec"]', "the logged spec is damaged"),
        ("spec.json", lambda data: data.replace(b'"seed": 3', b'"seed": "x"'), "the logged spec is damaged: seed"),
        ("spec.json", lambda data: b"[" * 100_000, "mlrepro/spec.json is damaged: not JSON (RecursionError)"),
        ("environment.json", lambda data: b"\xff\xfe{", "mlrepro/environment.json is damaged: not JSON"),
        ("environment.json", lambda data: b'["a", "list"]', "mlrepro/environment.json is damaged: not a mapping"),
        ("environment.json", lambda data: b'{"cpu.count": 2}', "mlrepro/environment.json is damaged: not a mapping"),
        ("seeding.json", lambda data: b'{"garbage": true}', "mlrepro/seeding.json is damaged: seed"),
        ("seeding.json", lambda data: data.replace(b'"seed": 3', b'"seed": 4'),
         "mlrepro/seeding.json is damaged: it seeded with 4, the spec says seed=3"),
        ("code.json", lambda data: b'{"entry_kind": 7}', "mlrepro/code.json is damaged: "),
    ],
)
def test_a_damaged_record_is_one_clear_error_naming_the_run_never_a_traceback(
    store: str, artifact: str, damage, message: str,
) -> None:
    with start_run(LineFitSpec(steps=2)) as run:
        run.log_loss(1.0)
        run.log_loss(0.5)
    path = artifact_folder(run.run_id) / artifact
    if damage is None:
        np.savez(path, steps=np.arange(2))
    else:
        damaged = damage(path.read_bytes())
        assert damaged != path.read_bytes(), "the damage must change the record"
        path.write_bytes(damaged)
    with pytest.raises(DamagedRecordError) as caught:
        load_run(run.run_id)
    assert str(caught.value).startswith(f"run {run.run_id}: {message}") and "\n" not in str(caught.value)


def test_resuming_refuses_a_deleted_run_and_a_checkpoint_without_its_checksum_before_any_run_exists(
    store: str,
) -> None:
    client = mlflow.MlflowClient()
    with pytest.raises(RuntimeError), start_run(LineFitSpec(steps=2, checkpoint_every=1)) as run:
        from mlrepro import Checkpoint, capture_rng_state

        run.log_loss(1.0)
        run.save_checkpoint(Checkpoint(step=1, epoch=0, batch_in_epoch=1, model={}, optimizer=None,
                                       rng=capture_rng_state(), extra={}))
        raise RuntimeError("stopped after step 0")  # FAILED: a run that may be resumed
    (artifact_folder(run.run_id) / "checkpoints" / "step-000000001.pt.sha256").unlink()
    before = len(client.search_runs(["0"]))
    with pytest.raises(CheckpointError, match="has no checksum beside it; it was not loaded"):
        with start_run(LineFitSpec(steps=2, checkpoint_every=1, resume_from=run.run_id)):
            pass
    client.delete_run(run.run_id)
    with pytest.raises(SpecError, match=f"resume_from: run {run.run_id} is deleted"):
        with start_run(LineFitSpec(steps=2, checkpoint_every=1, resume_from=run.run_id)):
            pass
    assert len(client.search_runs(["0"])) == before - 1  # nothing half-written: no new run, only the deletion


STARTS_AT_ONCE = """
import sys, time
from mlrepro import start_run
from projects.linefit.spec import LineFitSpec
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
with start_run(LineFitSpec(steps=3)) as run:
    for value in (3.0, 2.0, 1.0):
        run.log_loss(value)
"""


READS_AT_ONCE = """
import sys, time
from mlrepro.cli.main import main
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
main(sys.argv[2:])
"""


@pytest.mark.e2e
def test_eight_read_commands_at_once_on_a_new_sqlite_file_all_succeed(tmp_path: Path) -> None:
    (tmp_path / "new.db").touch()  # made by a job a moment ago, its schema not yet there
    start_at = time.time() + 8  # every process imported and waiting, then all open the store at once
    reads = [subprocess.Popen([sys.executable, "-c", READS_AT_ONCE, str(start_at), *command], cwd=tmp_path,
                              env=job_env(f"sqlite:///{tmp_path / 'new.db'}"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for command in [["find"], ["find", "--job", "linefit", "seed=3"]] * 4]
    results = [(read.wait(timeout=300), read.stdout.read(), read.stderr.read()) for read in reads]
    assert [code for code, _, _ in results] == [0] * 8, [err[-1500:] for _, _, err in results]
    assert all(out.strip() == "no matching runs" for _, out, _ in results)


@pytest.mark.e2e
def test_jobs_that_start_at_once_on_a_new_sqlite_file_all_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    start_at = time.time() + 8  # every process imported and waiting, then all open the new store at once
    jobs = [subprocess.Popen([sys.executable, "-c", STARTS_AT_ONCE, str(start_at)], cwd=tmp_path,
                             env=job_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    results = [(job.wait(timeout=300), job.stderr.read()) for job in jobs]
    assert [code for code, _ in results] == [0, 0, 0, 0], [err[-1500:] for _, err in results]
    runs = mlflow.MlflowClient(uri).search_runs(["0"])
    assert len(runs) == 4 and all(len(load_run(r.info.run_id, mlflow.MlflowClient(uri)).losses) == 3 for r in runs)
