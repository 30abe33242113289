"""A store that goes away loses nothing: every write waits in the local spool until the store takes it,
`mlrepro sync` delivers what a run left behind, once, in order, bit for bit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlrepro import load_run, start_run
from mlrepro.cli.main import main
from mlrepro.store import keys
from mlrepro.store.checkpoints import checkpoint_steps, write_checkpoint
from mlrepro.store.delivery import Delivery
from mlrepro.store.failures import StoreRefusedError
from mlrepro.store.spool import Spool, SpoolError
from mlrepro.store.sync import spooled_runs
from projects.linefit.spec import LineFitSpec
from tests.conftest import job_env
from tests.helpers.server import MlflowServer

SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.0, 5e-324]


def spooled_run(store: str, values: list[float]) -> tuple[str, Spool]:
    """A run made in the store, and a spool holding its losses, a tag, a metric, its exact record and its end."""
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    spool = Spool.create(run_id, store, "loss", 0)
    spool.append_losses(array("d", values[: len(values) // 2]))
    spool.append_losses(array("d", values[len(values) // 2 :]))
    spool.set_tag(run_id, "mlrepro.note", "from the spool")
    spool.log_metric(run_id, "accuracy", float("nan"), step=3)
    spool.set_terminated(run_id, "FINISHED")
    return run_id, spool


def history(store: str, run_id: str, metric: str = "loss") -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.MlflowClient(store).get_metric_history(run_id, metric)]


def test_a_spool_is_delivered_in_order_and_a_batch_sent_twice_is_stored_once(store: str) -> None:
    values = [float(i) / 7 for i in range(2500)] + SPECIAL
    run_id, spool = spooled_run(store, values)
    delivery = Delivery(spool.folder, mlflow.MlflowClient(store))
    delivery.deliver_available()
    assert delivery.pending().nothing
    # The answer to a batch was lost, say: the same batches are sent again, with the timestamps
    # they were spooled with, and the store keeps each step once.
    (spool.folder / "delivered.json").write_text(json.dumps({"losses": 0, "journal": 0}))
    Delivery(spool.folder, mlflow.MlflowClient(store)).deliver_available()
    logged = history(store, run_id)
    assert [step for step, _ in logged] == list(range(len(values)))
    assert [value for _, value in logged[:2500]] == values[:2500]
    run = mlflow.MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlrepro.note"] == "from the spool"
    assert np.isnan(history(store, run_id, "accuracy")[0][1])


def test_a_store_that_refuses_a_write_is_not_retried(store: str) -> None:
    run_id, spool = spooled_run(store, [1.0, 2.0])
    mlflow.MlflowClient(store).delete_run(run_id)  # the store will refuse every write to it, forever
    with pytest.raises(StoreRefusedError, match=f"refused run {run_id}"):
        Delivery(spool.folder, mlflow.MlflowClient(store)).deliver_available()
    assert Delivery(spool.folder, mlflow.MlflowClient(store)).pending().steps == 2


def test_sync_delivers_what_is_pending_says_so_and_then_has_nothing_to_do(store: str) -> None:
    values = [float(i) for i in range(1500)]
    run_id, spool = spooled_run(store, values)
    runner = CliRunner()
    shown = runner.invoke(main, ["show", run_id])  # every step is still in the spool
    assert shown.output.startswith(f"pending: this machine's spool ({spool.folder}) holds writes of this run"), \
        shown.output
    first = runner.invoke(main, ["sync", run_id[:8]])
    assert first.exit_code == 0, first.output
    assert first.output == f"run {run_id}: delivered 1,500 steps and 3 other writes; nothing pending\n"
    assert [value for _, value in history(store, run_id)] == values
    assert spooled_runs() == []
    again = runner.invoke(main, ["sync"])
    assert again.exit_code == 0 and again.output.startswith("nothing to deliver: no run has a spool in ")
    unknown = runner.invoke(main, ["sync", "0123456789abcdef"])
    assert unknown.exit_code == 2
    assert unknown.output.startswith("mlrepro: error: no spool for run '0123456789abcdef' in ")


def test_a_bad_store_wait_is_refused_before_a_run_exists(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLREPRO_STORE_WAIT_S", "a minute")
    with pytest.raises(SpoolError, match="MLREPRO_STORE_WAIT_S must be a number of seconds"):
        with start_run(LineFitSpec()):
            pass
    assert mlflow.MlflowClient(store).search_runs(["0"]) == []


# --- a real `mlflow server` that goes away ---------------------------------------------


def start_linefit(server: MlflowServer, cwd: Path, steps: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "projects.linefit", f"steps={steps}"], cwd=cwd,
                            env=job_env(server.uri, PYTHONHASHSEED="0", **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_until_training(server: MlflowServer, job: subprocess.Popen[str]) -> str:
    """The job's run id, once the server holds some of its steps and the writes made before them.

    A delivery sends the spooled steps before the journal's lines, so steps on the server do not
    yet mean the dataset the job logged before training is there: wait for both, or what the
    spool still holds when the server goes would depend on the moment."""
    client = mlflow.MlflowClient(server.uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert job.poll() is None, job.stderr.read()  # type: ignore[union-attr]
        runs = client.search_runs(["0"])
        if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
            run = client.get_run(runs[0].info.run_id)
            if run.inputs is not None and run.inputs.dataset_inputs:
                return run.info.run_id
        time.sleep(0.2)
    raise AssertionError("the job never logged a step")


def assert_whole_and_once(server: MlflowServer, run_id: str, steps: int) -> None:
    """Every step once, in order, equal to the exact record (as the store keeps values); the run FINISHED."""
    client = mlflow.MlflowClient(server.uri)
    logged = client.get_metric_history(run_id, "loss")
    assert sorted(point.step for point in logged) == list(range(steps))  # no step missing, none twice
    run = load_run(run_id, client)
    assert run.status == "FINISHED" and run.loss_source == "artifact" and len(run.losses) == steps
    by_step = {point.step: point.value for point in logged}
    assert np.array([by_step[s] for s in range(steps)]).tobytes() == run.losses.values.tobytes()
    assert client.get_run(run_id).data.tags["mlrepro.loss_digest"] == run.losses.digest


@pytest.fixture
def server(tmp_path: Path) -> MlflowServer:
    server = MlflowServer(tmp_path / "server")
    server.start()
    yield server
    server.stop()


@pytest.mark.e2e
def test_a_server_that_stops_mid_run_and_returns_before_the_end_gets_every_step(
    tmp_path: Path, server: MlflowServer
) -> None:
    job = start_linefit(server, tmp_path, 40_000)
    run_id = wait_until_training(server, job)
    server.stop(crash=True)
    time.sleep(1.0)  # the job trains on while the store is away
    server.start()
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) <= 6, stderr
    assert "training goes on" in stderr and "answers again" in stderr, stderr
    assert_whole_and_once(server, run_id, 40_000)


@pytest.mark.e2e
def test_a_server_away_when_the_run_ends_leaves_it_to_sync_which_delivers_every_step_once(
    tmp_path: Path, server: MlflowServer, spool_dir: Path
) -> None:
    job = start_linefit(server, tmp_path, 20_000, MLREPRO_STORE_WAIT_S="2")
    run_id = wait_until_training(server, job)
    server.stop(crash=True)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 4, stderr  # the record waits in the spool: not an error, not "done"
    print(stderr)
    assert "Traceback" not in stderr and len(stderr.splitlines()) <= 4, stderr
    last = stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"mlrepro: the tracking store did not take all of run {run_id} \(cannot reach the tracking server at "
        rf"{server.uri}: .*\): [\d,]+ steps, 3 other writes and the run's end wait in {spool_dir / run_id}; "
        rf"deliver them with: mlrepro sync {run_id}", last), last

    server.start()
    synced = subprocess.run([sys.executable, "-m", "mlrepro", "sync"], cwd=tmp_path, env=job_env(server.uri),
                            capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stderr
    assert re.fullmatch(rf"run {run_id}: delivered [\d,]+ steps and \d+ other writes; nothing pending\n",
                        synced.stdout), synced.stdout
    assert_whole_and_once(server, run_id, 20_000)
    again = subprocess.run([sys.executable, "-m", "mlrepro", "sync", run_id], cwd=tmp_path, env=job_env(server.uri),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "nothing of it is pending on this machine" in again.stderr
    assert_whole_and_once(server, run_id, 20_000)


def test_a_long_spools_delivery_reports_each_batch_so_sync_can_show_its_progress(store: str) -> None:
    run_id, spool = spooled_run(store, [float(i) for i in range(2500)])
    delivery, heard = Delivery(spool.folder, mlflow.MlflowClient(store)), []
    delivery.on_progress = lambda done, total: heard.append((done, total))
    delivery.deliver_available()
    # A batch a request, at most 1,000 steps, and never across two sends of the spool (their own times).
    done = [0] + [steps for steps, _ in heard]
    assert heard[-1] == (2500, 2500) and {total for _, total in heard} == {2500}
    assert all(0 < later - earlier <= 1000 for earlier, later in zip(done, done[1:]))


def forged(spool: Spool, *lines: dict) -> None:
    """Lines written into a spool's journal by someone other than mlrepro."""
    with open(spool.folder / "journal.jsonl", "a") as journal:
        for line in lines:
            journal.write(json.dumps(line) + "\n")


def test_a_spool_line_acts_on_the_spools_own_run_whatever_run_it_names(store: str) -> None:
    client = mlflow.MlflowClient(store)
    victim = client.create_run("0").info.run_id
    run_id = client.create_run("0").info.run_id
    spool = Spool.create(run_id, store, "loss", 0)
    forged(spool, {"method": "set_tag", "args": [victim, "owner", "forged"], "kwargs": {}},
           {"method": "set_terminated", "args": [victim], "kwargs": {"status": "KILLED", "end_time": 1}})
    Delivery(spool.folder, client).deliver_available()
    assert client.get_run(victim).info.status == "RUNNING" and "owner" not in client.get_run(victim).data.tags
    assert client.get_run(run_id).info.status == "KILLED" and client.get_run(run_id).data.tags["owner"] == "forged"


@pytest.mark.parametrize("line", [
    pytest.param(lambda outside: {"method": "log_artifact", "args": ["r", str(outside / "secret.txt")], "kwargs": {}},
                 id="an absolute path"),
    pytest.param(lambda outside: {"method": "log_artifact", "args": ["r", "files/../../outside/secret.txt"],
                                  "kwargs": {}}, id="a path out of the spool"),
    pytest.param(lambda outside: {"method": "delete_run", "args": ["r"], "kwargs": {}}, id="a method it never writes"),
    pytest.param(lambda outside: {"method": "set_tag", "args": ["r", "only a key"], "kwargs": {}}, id="missing arguments"),
    pytest.param(lambda outside: ["not", "a", "write"], id="not an object"),
    pytest.param(lambda outside: {"method": "delete_checkpoint", "args": ["r", "../../outside/secret.txt"],
                                  "kwargs": {}}, id="a checkpoint removal that names a path, not a step"),
    pytest.param(lambda outside: {"method": "delete_checkpoint", "args": ["r", -1], "kwargs": {}},
                 id="a checkpoint removal of no step"),
])
def test_a_forged_line_delivers_nothing_touches_nothing_outside_and_keeps_the_spool(
    store: str, tmp_path: Path, line: Callable[[Path], object]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("a secret")
    (outside / "beside.txt").write_text("its neighbour")
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    spool = Spool.create(run_id, store, "loss", 0)
    forged(spool, line(outside))
    with pytest.raises(SpoolError, match="damaged: a journal line is not"):
        Delivery(spool.folder, client).deliver_available()
    assert (outside / "secret.txt").read_text() == "a secret" and (outside / "beside.txt").exists()
    assert client.list_artifacts(run_id) == []
    assert (spool.folder / "journal.jsonl").exists()  # kept, to be looked at; nothing after it was sent


def checkpoint_in_spool(spool: Spool, run_id: str, folder: Path, step: int) -> None:
    """A checkpoint's two files, as the run writes them into its spool (their content is not read here)."""
    path = folder / keys.checkpoint_file(step)
    path.write_bytes(b"weights")
    path.with_name(path.name + keys.CHECKSUM_SUFFIX).write_text("0" * 64 + "\n")
    write_checkpoint(spool, run_id, path)


def test_a_checkpoint_no_longer_kept_leaves_the_store_and_after_an_outage_is_never_sent(
        store: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    spool = Spool.create(run_id, store, "loss", 0)
    checkpoint_in_spool(spool, run_id, tmp_path, 10)
    Delivery(spool.folder, client).deliver_available()
    assert checkpoint_steps(client, run_id) == [10]
    # The store was away while steps 20 and 30 were saved and 10 and 20 were let go (keep_checkpoints=1).
    checkpoint_in_spool(spool, run_id, tmp_path, 20)
    spool.delete_checkpoint(run_id, 10)
    checkpoint_in_spool(spool, run_id, tmp_path, 30)
    spool.delete_checkpoint(run_id, 20)
    sent: list[str] = []
    client.log_artifact = lambda run, path, **options: sent.append(Path(path).name) or \
        mlflow.MlflowClient.log_artifact(client, run, path, **options)  # what the store is sent, counted
    Delivery(spool.folder, client).deliver_available()
    assert checkpoint_steps(client, run_id) == [30]
    assert [entry.path for entry in client.list_artifacts(run_id, keys.CHECKPOINT_ARTIFACT_DIR)] == [
        f"{keys.CHECKPOINT_ARTIFACT_DIR}/{keys.checkpoint_file(30)}",
        f"{keys.CHECKPOINT_ARTIFACT_DIR}/{keys.checkpoint_file(30)}{keys.CHECKSUM_SUFFIX}"]
    assert sent == [keys.checkpoint_file(30), keys.checkpoint_file(30) + keys.CHECKSUM_SUFFIX]  # not step 20's


def test_a_file_rewritten_during_an_outage_is_sent_once_as_last_written_and_its_namesake_elsewhere_too(
        store: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    spool = Spool.create(run_id, store, "loss", 0)
    record = tmp_path / "losses.npy"
    for flush in range(3):  # a run's exact loss record is rewritten at each flush
        record.write_text(f"flush {flush}")
        spool.log_artifact(run_id, str(record), artifact_path="mlrepro")
    record.write_text("another folder's")
    spool.log_artifact(run_id, str(record), artifact_path="elsewhere")
    sent: list[str] = []
    client.log_artifact = lambda run, path, **options: sent.append(Path(path).read_text()) or \
        mlflow.MlflowClient.log_artifact(client, run, path, **options)
    Delivery(spool.folder, client).deliver_available()
    assert sent == ["flush 2", "another folder's"]
    assert Path(client.download_artifacts(run_id, "mlrepro/losses.npy", str(tmp_path / "back"))).read_text() == "flush 2"


# The team's server deletes through its artifact proxy (HTTP DELETE); a SQLite file's folder, on disk.
@pytest.mark.parametrize("store", ["sqlite", pytest.param("team", marks=[pytest.mark.team, pytest.mark.e2e])],
                         indirect=True)
def test_a_run_keeps_its_newest_checkpoints_as_keep_checkpoints_says(store: str) -> None:
    model = torch.nn.Linear(2, 1)
    with start_run(LineFitSpec(checkpoint_every=1, keep_checkpoints=2)) as run:
        for _ in range(5):
            run.log_loss(0.5)
            run.checkpoint_if_due(model)
    assert checkpoint_steps(mlflow.MlflowClient(store), run.run_id) == [4, 5]
    with start_run(LineFitSpec(checkpoint_every=2, keep_checkpoints=0)) as run:  # 0: every one
        for _ in range(6):
            run.log_loss(0.5)
            run.checkpoint_if_due(model)
    assert checkpoint_steps(mlflow.MlflowClient(store), run.run_id) == [2, 4, 6]


def test_sync_names_a_damaged_spool_keeps_it_and_still_delivers_the_others(store: str) -> None:
    client = mlflow.MlflowClient(store)
    damaged_id = client.create_run("0").info.run_id
    damaged = Spool.create(damaged_id, store, "loss", 0)
    forged(damaged, {"method": "delete_run", "args": [damaged_id], "kwargs": {}})
    good_id, _ = spooled_run(store, [1.0, 2.0, 3.0])
    result = CliRunner().invoke(main, ["sync"])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert f"run {good_id}: delivered 3 steps and 3 other writes; nothing pending" in lines
    assert [line for line in lines if line.startswith(f"run {damaged_id}: not delivered past a damaged line")]
    assert [value for _, value in history(store, good_id)] == [1.0, 2.0, 3.0]
    assert spooled_runs() == [damaged_id] and client.get_run(damaged_id).info.lifecycle_stage == "active"


def test_a_spool_whose_store_was_deleted_makes_nothing_is_named_and_can_be_let_go(store: str, tmp_path: Path) -> None:
    # A run that logged to a SQLite file in a folder since deleted, killed before its spool was delivered.
    gone_folder = tmp_path / "deleted"
    gone_folder.mkdir()
    gone_store = f"sqlite:///{gone_folder / 'mlflow.db'}"
    gone_id = mlflow.MlflowClient(gone_store).create_run("0").info.run_id
    Spool.create(gone_id, gone_store, "loss", 0).append_losses(array("d", [1.0, 2.0]))
    shutil.rmtree(gone_folder)
    good_id, _ = spooled_run(store, [1.0, 2.0, 3.0])
    result = CliRunner().invoke(main, ["sync"])
    assert result.exit_code == 2, result.output
    assert f"run {good_id}: delivered 3 steps and 3 other writes; nothing pending" in result.output
    assert (f"run {gone_id}: its tracking store {gone_folder / 'mlflow.db'} is gone; nothing delivered and no "
            f"store made, the spool kept (mlrepro sync --discard {gone_id} lets it go)") in result.output.splitlines()
    assert not gone_folder.exists() and spooled_runs() == [gone_id]

    let_go = CliRunner().invoke(main, ["sync", "--discard", gone_id[:8]])
    assert let_go.exit_code == 0 and let_go.output == f"run {gone_id}: spool discarded, with 2 steps its store never got\n"
    assert spooled_runs() == [] and not gone_folder.exists()
    assert CliRunner().invoke(main, ["sync"]).output.startswith("nothing to deliver")


def test_discard_lets_go_only_the_spools_it_is_told(store: str) -> None:
    kept_id, _ = spooled_run(store, [1.0])
    refused = CliRunner().invoke(main, ["sync", "--discard"])
    assert refused.exit_code == 2 and "name the runs whose spools to let go" in refused.output
    assert spooled_runs() == [kept_id]


@pytest.mark.parametrize(("line", "delivered"), [
    ({"method": "delete_checkpoint", "args": [], "kwargs": {}}, [10]),
    ({"method": "log_artifact", "args": ["r"], "kwargs": {}}, [10]),
    (["not", "a", "write"], []),  # refused as the journal is read, before any of it is delivered
])
def test_a_forged_line_after_a_checkpoint_stops_delivery_there_in_one_line(store: str, tmp_path: Path,
                                                                           line: object, delivered: list[int]) -> None:
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    spool = Spool.create(run_id, store, "loss", 0)
    checkpoint_in_spool(spool, run_id, tmp_path, 10)
    forged(spool, line)  # read while deciding whether the checkpoint before it is still wanted
    with pytest.raises(SpoolError, match="damaged: a journal line is not"):
        Delivery(spool.folder, client).deliver_available()
    assert checkpoint_steps(client, run_id) == delivered  # what came before the forged line
