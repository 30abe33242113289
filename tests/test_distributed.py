"""CIFAR-10 with DistributedDataParallel under torchrun: rank 0 owns the run, every rank's loss is in
the exact record, two runs with two processes are identical, and another world size is named."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlrepro import compare_runs, load_run
from mlrepro.analysis.diagnosis import differences
from mlrepro.cli.main import main
from tests.conftest import (
    job_env,
    kill_after_checkpoints,
    only_run_id,
    run_command,
    run_here,
    start_job,
)
from tests.helpers.server import free_port

# 200 images, 4 a batch: 50 steps an epoch on one process, 25 on each of two.
SPEC = ["dataset=fake", "train_limit=200", "test_limit=20", "epochs=2", "num_workers=0", "checkpoint_every=0"]


def cifar10(store: str, cwd: Path, *assignments: str) -> str:
    """One run of the job, as `python -m projects.cifar10 ...` starts it; its run id."""
    client = mlflow.MlflowClient()
    before = {run.info.run_id for run in client.search_runs(["0"])}
    result = run_command([sys.executable, "-m", "projects.cifar10", *SPEC, *assignments], store, cwd, PYTHONHASHSEED="0")
    assert result.returncode == 0, result.stderr[-3000:]
    made = [run for run in client.search_runs(["0"]) if run.info.run_id not in before]
    assert len(made) == 1, [run.info.run_id for run in made]  # the other ranks create no runs
    return made[0].info.run_id


def two_agents(store: str, cwd: Path, *assignments: str) -> list[subprocess.Popen[str]]:
    """Two nodes, simulated: two torchrun agents of one process each, meeting at 127.0.0.1 as two
    machines would at their master's address."""
    port = free_port()
    # Each agent's stderr goes to a file: with pipes, one agent waited on while the other filled its
    # pipe (64 KB of warnings) would block that one, and with it the whole process group.
    return [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                          f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                          "-m", "projects.cifar10", *SPEC, *assignments],
                         cwd=cwd, env=job_env(store, PYTHONHASHSEED="0"), stdout=subprocess.DEVNULL,
                         stderr=(cwd / f"agent-{node}.stderr").open("w"), text=True)
        for node in (0, 1)
    ]


def finished(agents: list[subprocess.Popen[str]], cwd: Path) -> list[str]:
    """Wait for both agents; what each wrote on stderr. Agents that hang are killed, not left behind."""
    try:
        for agent in agents:
            agent.wait(timeout=300)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    return [(cwd / f"agent-{node}.stderr").read_text() for node in (0, 1)]


@pytest.mark.e2e
def test_two_processes_train_one_run_that_repeats_bit_for_bit_on_one_machine_or_two_and_another_world_size_is_named(
    tmp_path: Path, store: str
) -> None:
    first = cifar10(store, tmp_path, "nproc=2")  # the job starts torchrun itself, two ranks on this machine
    agents = two_agents(store, tmp_path, "nproc=2")
    errors = finished(agents, tmp_path)
    assert [agent.returncode for agent in agents] == [0, 0], [error[-3000:] for error in errors]
    two_nodes = only_run_id(store)
    assert len(mlflow.MlflowClient().search_runs(["0"])) == 2  # one run for both nodes
    single = cifar10(store, tmp_path, "nproc=1")

    run = load_run(first)
    assert len(run.losses) == 50  # 25 steps an epoch on each rank, 2 epochs
    tags = mlflow.MlflowClient().get_run(first).data.tags
    assert tags["mlrepro.environment.distributed.world_size"] == "2"
    assert tags["mlrepro.environment.distributed.backend"] == "gloo"
    assert tags["mlrepro.environment.distributed.bucket_cap_mb"] == "25"
    assert tags["mlrepro.environment.distributed.devices"] == "cpu, cpu"
    # The exact record keeps each rank's loss; the metric is their mean, taken in rank order.
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.MlflowClient().download_artifacts(first, "mlrepro/losses.npz", folder)
        with np.load(path) as record:
            per_rank = record["rank_values"]
    assert per_rank.shape == (2, 50)
    assert not np.array_equal(per_rank[0], per_rank[1])  # each rank its own shard
    assert ((per_rank[0] + per_rank[1]) / 2).tobytes() == run.losses.values.tobytes()
    metric = mlflow.MlflowClient().get_metric_history(first, "loss")
    assert sorted(point.step for point in metric) == list(range(50))

    # gloo sums two ranks' gradients the same way whether they meet on one machine or two.
    verdict = compare_runs(two_nodes, first)
    print(f"two agents against one with two processes: {verdict.verdict}; "
          f"environment differences: {[d.key for d in verdict.differences]}")
    assert verdict.identical

    other = compare_runs(single, first)
    assert not other.identical
    cause = other.differences[0]
    assert (cause.source, cause.key, cause.value_a, cause.value_b) == ("spec", "nproc", "1", "2")
    assert cause.category == "distributed" and "another number of processes" in cause.explanation

    wrong = run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "projects.cifar10", *SPEC, "nproc=3"], store, tmp_path)
    assert wrong.returncode != 0
    assert "nproc: must be the number of processes torchrun started on all nodes (2), got 3" in wrong.stderr


def test_a_bucket_size_or_backend_difference_is_ranked_with_the_world_size_near_the_top() -> None:
    found = differences({"seed": "3", "bucket_cap_mb": "25"}, {"seed": "4", "bucket_cap_mb": "1"},
                        {"distributed.backend": "nccl", "torch.version": "2.1"},
                        {"distributed.backend": "gloo", "torch.version": "2.2"})
    assert [(d.key, d.category) for d in found] == [
        ("bucket_cap_mb", "distributed"), ("distributed.backend", "distributed"), ("torch.version", "versions"),
        ("seed", "seed"),
    ]
    assert "pytorch issue 30509" in found[0].explanation


@pytest.mark.e2e
def test_a_killed_run_of_two_processes_resumes_bit_for_bit(tmp_path: Path, store: str) -> None:
    # 2,400 images: 300 steps an epoch on each rank; checkpoints every 50 steps, mid-epoch and at its end.
    spec = ["dataset=fake", "train_limit=2400", "test_limit=20", "epochs=2", "num_workers=0", "checkpoint_every=50",
            "nproc=2"]
    job = start_job(store, tmp_path, [sys.executable, "-m", "projects.cifar10", *spec])
    killed = kill_after_checkpoints(store, job, at_least=3, tree=True)
    resumed = run_command([sys.executable, "-m", "projects.cifar10", *spec, f"resume_from={killed}"], store, tmp_path,
                          PYTHONHASHSEED="0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_id = only_run_id(store)
    uninterrupted = run_command([sys.executable, "-m", "projects.cifar10", *spec], store, tmp_path, PYTHONHASHSEED="0")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    whole = only_run_id(store)
    resumed_at = int(mlflow.MlflowClient().get_run(resumed_id).data.tags["mlrepro.resumed_at_step"])
    assert 0 < resumed_at < 600
    verdict = run_here(main, "compare", resumed_id, whole)
    assert verdict.exit_code == 0, verdict.stdout + verdict.stderr
    assert "logged the same 600 losses, bit for bit" in verdict.stdout
