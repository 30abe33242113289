"""Verdicts in MLflow: the loss digest on every run, compare --log tags and plots, find and show."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlrepro import compare_runs, find_runs, load_run, record_comparison, start_run
from mlrepro.capture.losses import LossSeries
from mlrepro.cli.main import main
from mlrepro.errors import ExperimentNotFoundError, SpecError
from projects.linefit.spec import LineFitSpec
from tests.conftest import LineFitRuns, run_here


def logged_run(losses: list[float], **fields: object) -> str:
    with start_run(LineFitSpec(steps=len(losses), **fields)) as run:
        for value in losses:
            run.log_loss(value)
    return run.run_id


def test_every_run_carries_the_digest_of_its_exact_losses(store: str) -> None:
    a = logged_run([1.0, 0.5])
    b = logged_run([1.0, 0.5])
    c = logged_run([1.0, float(np.nextafter(0.5, 1.0))])  # the UI shows the same rounded value
    digest = {run_id: mlflow.MlflowClient().get_run(run_id).data.tags["mlrepro.loss_digest"] for run_id in (a, b, c)}
    assert digest[a] == digest[b] != digest[c]
    assert digest[a] == LossSeries.from_steps_and_values([0, 1], [1.0, 0.5]).digest
    assert [run.run_id for run in find_runs(loss_digest=digest[a])] == [b, a]


def test_compare_log_tags_both_runs_and_attaches_the_plot(store: str, tmp_path: Path) -> None:
    a, b = logged_run([3.0, 2.0, 1.0]), logged_run([3.0, 2.0, 1.0])
    c = logged_run([3.0, 2.5, 1.0], seed=4)
    run_a, run_b, run_c = load_run(a), load_run(b), load_run(c)
    record_comparison(compare_runs(run_a, run_b), run_a, run_b)
    record_comparison(compare_runs(run_a, run_c), run_a, run_c)

    client = mlflow.MlflowClient()
    tags_a = client.get_run(a).data.tags
    assert tags_a[f"mlrepro.verdict.{b}"] == "identical bit for bit (3 steps)"
    assert tags_a[f"mlrepro.verdict.{c}"] == "different from step 1 (likely cause: seed)"
    assert client.get_run(b).data.tags[f"mlrepro.verdict.{a}"] == "identical bit for bit (3 steps)"

    plot = Path(client.download_artifacts(c, f"mlrepro/compare/{a}.png", str(tmp_path)))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    # and find shows the verdicts next to each run
    by_id = {run.run_id: run for run in find_runs()}
    assert by_id[a].verdicts == {b: "identical bit for bit (3 steps)", c: "different from step 1 (likely cause: seed)"}


def test_the_verdict_tags_are_not_mistaken_for_environment(store: str) -> None:
    a, b = logged_run([1.0]), logged_run([1.0])
    run_a, run_b = load_run(a), load_run(b)
    record_comparison(compare_runs(run_a, run_b), run_a, run_b)
    assert compare_runs(a, b).differences == []


def test_find_by_spec_spec_hash_environment_and_experiment(store: str) -> None:
    first = logged_run([1.0], seed=5)
    mlflow.set_experiment("other")
    try:
        second = logged_run([1.0], seed=5)
        third = logged_run([1.0], seed=6)
    finally:
        mlflow.set_experiment(experiment_id="0")
    spec = LineFitSpec(seed=5, steps=1)

    assert [run.run_id for run in find_runs(spec=spec)] == [second, first]  # newest first
    assert [run.run_id for run in find_runs(spec_hash=spec.hash, experiment="other")] == [second]
    assert [run.run_id for run in find_runs(experiment="0")] == [first]
    found = find_runs(env_hash=load_run(third).tags["mlrepro.env_hash"])
    assert third in [run.run_id for run in found]
    summary = find_runs(spec=LineFitSpec(seed=6, steps=1))[0]
    assert (summary.job, summary.spec_hash, summary.status) == ("linefit", LineFitSpec(seed=6, steps=1).hash, "FINISHED")


def test_find_refuses_bad_criteria(store: str) -> None:
    with pytest.raises(ExperimentNotFoundError, match="no experiment named or numbered 'nope'"):
        find_runs(experiment="nope")
    with pytest.raises(SpecError, match="spec_hash: must be a hex hash"):
        find_runs(spec_hash="x' or '1'='1")
    with pytest.raises(SpecError, match="not both"):
        find_runs(spec=LineFitSpec(), spec_hash="abc")


def test_the_cli_find_show_and_compare_log(store: str, tmp_path: Path) -> None:
    """In this process, as mlrepro's command line runs them (test_cli starts one in a process of its own)."""
    a, b = logged_run([2.0, 1.0], seed=9), logged_run([2.0, 1.0], seed=9)
    logged = run_here(main, "compare", "--log", a, b)
    assert logged.exit_code == 0, logged.stderr
    assert (f"recorded on run {a}: tag mlrepro.verdict.{b} = 'identical bit for bit (2 steps)', "
            f"plot mlrepro/compare/{b}.png") in logged.stdout.splitlines()

    found = json.loads(run_here(main, "find", "--json", "--job", "linefit", "seed=9", "steps=2").stdout)
    assert [run["run_id"] for run in found] == [b, a]
    assert found[0]["verdicts"] == {a: "identical bit for bit (2 steps)"}
    (tmp_path / "spec.yaml").write_text("job: linefit\nseed: 9\nsteps: 2\n")
    table = run_here(main, "find", "--spec", "spec.yaml").stdout.splitlines()
    assert table[0].split()[:3] == ["run", "id", "started"] and len(table) == 3

    shown = run_here(main, "show", a[:8])  # the form find prints
    assert shown.exit_code == 0
    assert f"run {a} (FINISHED)" in shown.stdout and "  seed: 9" in shown.stdout
    assert "losses (loss, from the artifact): 2 steps (0..1)" in shown.stdout
    assert f"  vs {b}: identical bit for bit (2 steps)" in shown.stdout
    assert "  torch.version: " in shown.stdout

    # A job this process cannot import is looked up by its logged params; none here.
    unknown = run_here(main, "find", "--job", "resnet", "depth=50")
    assert unknown.exit_code == 0 and unknown.stdout.strip() == "no matching runs"
    no_job = run_here(main, "find", "seed=9")
    assert no_job.exit_code == 2 and "job: missing" in no_job.stderr


def test_on_launched_run_outside_mlflow_run_records_nothing_and_exits_by_the_verdict(
    linefit_store: LineFitRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # no run launched: nothing to record the verdict on
    result = run_here(main, "compare", linefit_store.same_a, linefit_store.other_seed, "--on-launched-run")
    assert result.exit_code == 1, result.stderr
    assert "recorded on run" not in result.stdout + result.stderr
    assert len(mlflow.MlflowClient().search_runs(["0"])) == 3  # the shared runs, and no other
