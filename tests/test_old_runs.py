"""Runs logged by an earlier mlrepro read back, and compare, exactly as they did then.

``fixtures/runs-13f04df.tar.gz`` is a SQLite store with its artifacts, logged by mlrepro at
commit 13f04df (the flat package, before its modules moved into subpackages): three line-fit
runs (seed 3 twice, seed 4; 12 steps, fingerprints every 4, checkpoints every 6), and what
``mlrepro compare`` printed for them then (``runs.json``). Never regenerate it: it is the
record of what an old version wrote.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from mlrepro.cli.main import main
from tests.conftest import run_here, use_store

FIXTURE = Path(__file__).parent / "fixtures" / "runs-13f04df.tar.gz"
LOGGED_IN = "/tmp/fx/store"  # where the old version's store lay: its artifact URIs name it


@pytest.fixture
def old_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (LOGGED_IN, str(tmp_path)))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (LOGGED_IN, str(tmp_path)))
    use_store(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, monkeypatch)
    return json.loads((tmp_path / "runs.json").read_text())


def test_old_runs_compare_as_they_did(old_store: dict) -> None:
    ids, then = old_store["ids"], old_store["compare"]
    for name, (a, b) in {"same": (ids["same_a"], ids["same_b"]), "other": (ids["same_a"], ids["other_seed"])}.items():
        as_json = run_here(main, "compare", a, b, "--json")
        assert json.loads(as_json.stdout) == then[name]
        as_text = run_here(main, "compare", a, b)
        assert (as_text.stdout, as_text.exit_code) == (then[f"{name}_text"], then[f"{name}_exit"])


def test_old_runs_read_back_whole(old_store: dict) -> None:
    from mlrepro import load_run

    run = load_run(old_store["ids"]["other_seed"])
    assert run.spec_fields["seed"] == "4" and run.spec.job == "linefit" and run.spec.hash
    assert run.loss_source == "artifact" and len(run.losses.values) == 12
    assert run.environment["torch.version"] == "2.14.1"


def test_reading_a_run_draws_no_progress_bar(old_store: dict, capfd: pytest.CaptureFixture[str]) -> None:
    """MLflow draws a tqdm bar for every artifact download where tqdm is installed (the test extra
    installs it, as Hugging Face's libraries do); mlrepro's own reads of a run draw none."""
    pytest.importorskip("tqdm")
    from mlrepro import compare_runs

    compare_runs(old_store["ids"]["same_a"], old_store["ids"]["other_seed"])
    assert "Downloading artifacts" not in capfd.readouterr().err


def test_an_old_checkpoint_loads_without_the_slots_added_since(old_store: dict, tmp_path: Path) -> None:
    import mlflow

    from mlrepro.store.checkpoints import checkpoint_steps, download_checkpoint
    from mlrepro.training.checkpoint import load_checkpoint

    client, run_id = mlflow.MlflowClient(), old_store["ids"]["same_a"]
    assert checkpoint_steps(client, run_id) == [6, 12]
    loaded = load_checkpoint(download_checkpoint(client, run_id, 12, tmp_path))
    assert loaded.step == 12 and loaded.scheduler is None and loaded.model
