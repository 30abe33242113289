"""The command line as a user meets it: verdicts, exit codes, and one line for every mistake.

Checked in this process (click's runner) on the session's shared line-fit runs; one test starts the
command in a process of its own, as a shell does."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro.cli.job import job_command, spec_file_command
from mlrepro.cli.main import main
from projects import TRAINERS
from projects.linefit.spec import LineFitSpec
from projects.linefit.train import train
from tests.conftest import (
    LineFitRuns,
    assert_one_line_error,
    assert_one_line_error_here,
    mlrepro_cli,
    only_run_id,
    run_command,
    run_here,
)

LINEFIT = job_command(LineFitSpec, train)

# Runs each command line in this one process, then says whether torch was imported on the way.
IMPORTS_TORCH = """
import json, sys
from mlrepro.cli.main import main
for args in json.loads(sys.argv[1]):
    try:
        main(args, prog_name="mlrepro")
    except SystemExit as exit:
        print("exit", exit.code)
print("torch imported:", "torch" in sys.modules)
"""


def test_identical_runs_exit_0_different_runs_exit_1_naming_the_step_and_the_cause(linefit_store: LineFitRuns) -> None:
    a, b, c = linefit_store.same_a, linefit_store.same_b, linefit_store.other_seed

    result = run_here(main, "compare", a, b)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"identical: runs {a} and {b} logged the same 30 losses, bit for bit")

    result = run_here(main, "compare", a[:8], c[:12])  # unique prefixes, as find and show print them
    assert result.exit_code == 1, result.stderr
    lines = result.stdout.splitlines()
    # Another seed draws other initial weights: the fingerprints part before the first update.
    assert lines[0] == f"different: runs {a} and {c} first differ at step 0: 0.weight (parameter)"
    assert lines[1].startswith("  fingerprints first differ at step 0 (initial weights), in forward order: "
                               "0.weight (parameter), 0.weight (gradient), 0.bias (parameter)")
    assert lines[2] == "  losses first differ at step 0"
    assert lines[3].startswith("    A: ") and lines[4].startswith("    B: ")
    assert "30 of 30 common steps differ" in lines[5]
    assert any(line.split()[:5] == ["spec", "seed", "3", "|", "4"] for line in lines)

    as_json = json.loads(run_here(main, "compare", "--json", a, c).stdout)
    assert as_json["identical"] is False and as_json["first_divergent_step"] == 0
    assert [(d["source"], d["key"], d["value_a"], d["value_b"]) for d in as_json["differences"]] == [
        ("spec", "seed", "3", "4")
    ]
    assert as_json["diagnosis"].startswith("most likely cause: seed (3 | 4): another seed draws")


@pytest.mark.e2e
def test_in_a_process_of_its_own_compare_exits_as_documented_and_reading_never_imports_torch(
    linefit_store: LineFitRuns, tmp_path: Path
) -> None:
    store = mlflow.get_tracking_uri()
    a, c = linefit_store.same_a, linefit_store.other_seed
    different = mlrepro_cli(store, tmp_path, "compare", a[:8], c[:12])
    assert different.returncode == 1, different.stderr
    assert different.stdout.startswith(f"different: runs {a} and {c} first differ at step 0")
    assert_one_line_error(mlrepro_cli(store, tmp_path, "compare", a, "nosuchrun"), "no run 'nosuchrun'")

    # Reading commands never import torch: --help and compare start in a fraction of the time.
    commands = [["--help"], ["compare", a, c], ["show", a], ["find"]]
    light = run_command([sys.executable, "-c", IMPORTS_TORCH, json.dumps(commands)], store, tmp_path)
    assert light.stdout.count("exit ") == 4 and "exit 1" in light.stdout, light.stdout + light.stderr[-2000:]
    assert "torch imported: False" in light.stdout

    # A job's --help and a typo answer before its training code, torch and MLflow are imported.
    job = """
import runpy, sys
sys.argv = ["job", *sys.argv[1:]]
try:
    runpy.run_module("projects.linefit", run_name="__main__")
except SystemExit as exit:
    print("exit", exit.code, "torch imported:", "torch" in sys.modules, "mlflow imported:", "mlflow" in sys.modules)
"""
    for words, code in ((["--help"], 0), (["sed=4"], 2)):
        answered = run_command([sys.executable, "-c", job, *words], store, tmp_path)
        assert f"exit {code} torch imported: False mlflow imported: False" in answered.stdout, \
            answered.stdout + answered.stderr[-2000:]
    assert "did you mean seed?" in answered.stderr


def test_compare_errors_exit_2_with_one_line(linefit_store: LineFitRuns, monkeypatch: pytest.MonkeyPatch) -> None:
    real = linefit_store.same_a
    assert_one_line_error_here(run_here(main, "compare", real, "nosuchrun"), "no run 'nosuchrun'")

    with mlflow.start_run() as empty:
        mlflow.log_param("seed", "1")
    assert_one_line_error_here(run_here(main, "compare", real, empty.info.run_id), "logged no 'loss' metric")

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    assert_one_line_error_here(run_here(main, "compare", real, real),
                               "cannot reach the tracking server at http://127.0.0.1:9")


def test_compare_without_two_runs_is_a_usage_error() -> None:
    result = run_here(main, "compare", "onlyone")
    assert result.exit_code == 2 and "Missing argument" in result.stderr


def test_bad_job_input_exits_2_with_one_line_and_logs_nothing(store: str) -> None:
    cases = [
        (["seed=-1"], "seed: must be from 0 to 4294967295 (got '-1')"),
        (["steps=0"], "steps: must be from 1 to 1000000000"),
        (["lr=-1e-4"], "lr: must be greater than 0"),
        (["lr=abc"], "lr: must be a number (got 'abc')"),
        (["device=tpu"], "device: must be auto, cpu, cuda or cuda:N"),
        (["colour=red"], "colour: unknown field (allowed: "),
        (["seed"], "expected field=value, got 'seed'"),
        (["--spec", "missing.yaml"], "spec file not found: missing.yaml"),
    ]
    for words, message in cases:
        assert_one_line_error_here(run_here(LINEFIT, *words), message)
    assert mlflow.MlflowClient().search_runs(["0"]) == []


def test_a_spec_file_runs_and_words_override_it(tmp_path: Path, store: str) -> None:
    (tmp_path / "spec.yaml").write_text("job: linefit\nseed: 5\nsteps: 7\n")
    result = run_here(LINEFIT, "--spec", "spec.yaml", "steps=9")
    assert result.exit_code == 0, result.stderr
    params = mlflow.MlflowClient().get_run(only_run_id(store)).data.params
    assert (params["seed"], params["steps"]) == ("5", "9")

    by_job_field = run_here(spec_file_command(TRAINERS), "--spec", "spec.yaml")
    assert by_job_field.exit_code == 0, by_job_field.stderr
    assert mlflow.MlflowClient().get_run(only_run_id(store)).data.params["steps"] == "7"


def test_python_dash_m_mlrepro_is_the_command_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["mlrepro", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("mlrepro", run_name="__main__")
    assert exited.value.code == 0
    assert "compare" in capsys.readouterr().out


def test_version_says_which_mlrepro_this_is() -> None:
    from importlib.metadata import version

    result = run_here(main, "--version")
    assert (result.exit_code, result.stdout) == (0, f"mlrepro {version('mlrepro')}\n")


def test_a_jobs_help_gives_each_field_its_default_and_meaning() -> None:
    shown = run_here(LINEFIT, "--help").stdout
    assert "  seed=3" in shown and "seeds Python, NumPy, torch CPU and every CUDA device" in shown
    assert "  deterministic=true" in shown and "  lr=0.0001" in shown and "job=" not in shown
