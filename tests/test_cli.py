"""The command line as a user meets it: verdicts, exit codes, and one line for every mistake."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import assert_one_line_error, mlrepro_cli, only_run_id, run_command, run_linefit


def two_runs(store: str, cwd: Path, *other: str) -> tuple[str, str]:
    assert run_linefit(store, cwd, "seed=3", "steps=30").returncode == 0
    first = only_run_id(store)
    assert run_linefit(store, cwd, "steps=30", *other).returncode == 0
    return first, only_run_id(store)


# Runs each command line in this one process, then says whether torch was imported on the way.
IMPORTS_TORCH = """
import json, sys
from mlrepro.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args, prog_name="mlrepro")
    except SystemExit as exit:
        print("exit", exit.code)
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.both_stores
def test_identical_runs_exit_0_different_runs_exit_1_naming_the_step_and_the_cause(tmp_path: Path, store: str) -> None:
    a, b = two_runs(store, tmp_path, "seed=3")
    assert run_linefit(store, tmp_path, "steps=30", "seed=4").returncode == 0
    c = only_run_id(store)

    result = mlrepro_cli(store, tmp_path, "compare", a, b)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"identical: runs {a} and {b} logged the same 30 losses, bit for bit")

    result = mlrepro_cli(store, tmp_path, "compare", a[:8], c[:12])  # unique prefixes, as find and show print them
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    # Another seed draws other initial weights: the fingerprints part before the first update.
    assert lines[0] == f"different: runs {a} and {c} first differ at step 0: 0.weight (parameter)"
    assert lines[1].startswith("  fingerprints first differ at step 0 (initial weights), in forward order: "
                               "0.weight (parameter), 0.weight (gradient), 0.bias (parameter)")
    assert lines[2] == "  losses first differ at step 0"
    assert lines[3].startswith("    A: ") and lines[4].startswith("    B: ")
    assert "30 of 30 common steps differ" in lines[5]
    assert any(line.split()[:5] == ["spec", "seed", "3", "|", "4"] for line in lines)

    as_json = json.loads(mlrepro_cli(store, tmp_path, "compare", "--json", a, c).stdout)
    assert as_json["identical"] is False and as_json["first_divergent_step"] == 0
    assert [(d["source"], d["key"], d["value_a"], d["value_b"]) for d in as_json["differences"]] == [
        ("spec", "seed", "3", "4")
    ]
    assert as_json["diagnosis"].startswith("most likely cause: seed (3 | 4): another seed draws")

    # Reading commands never import torch: --help and compare start in a fraction of the time.
    commands = [["--help"], ["compare", a, c], ["show", a], ["find"]]
    light = run_command([sys.executable, "-c", IMPORTS_TORCH, json.dumps(commands)], store, tmp_path)
    assert light.stdout.count("exit ") == 4 and "exit 1" in light.stdout, light.stdout + light.stderr[-2000:]
    assert "torch imported: False" in light.stdout


def test_compare_errors_exit_2_with_one_line(tmp_path: Path, store: str) -> None:
    assert run_linefit(store, tmp_path, "steps=3").returncode == 0
    real = only_run_id(store)
    assert_one_line_error(mlrepro_cli(store, tmp_path, "compare", real, "nosuchrun"), "no run 'nosuchrun'")

    with mlflow.start_run() as empty:
        mlflow.log_param("seed", "1")
    assert_one_line_error(mlrepro_cli(store, tmp_path, "compare", real, empty.info.run_id), "logged no 'loss' metric")

    unreachable = run_command(
        [sys.executable, "-m", "mlrepro", "compare", real, real], "http://127.0.0.1:9", tmp_path,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    assert_one_line_error(unreachable, "cannot reach the tracking server at http://127.0.0.1:9")


def test_compare_without_two_runs_is_a_usage_error(tmp_path: Path, store: str) -> None:
    result = mlrepro_cli(store, tmp_path, "compare", "onlyone")
    assert result.returncode == 2 and "Missing argument" in result.stderr and "Traceback" not in result.stderr


def test_bad_job_input_exits_2_with_one_line_and_logs_nothing(tmp_path: Path, store: str) -> None:
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
        assert_one_line_error(run_linefit(store, tmp_path, *words), message)
    assert mlflow.MlflowClient().search_runs(["0"]) == []


def test_a_spec_file_runs_and_words_override_it(tmp_path: Path, store: str) -> None:
    (tmp_path / "spec.yaml").write_text("job: linefit\nseed: 5\nsteps: 7\n")
    result = run_linefit(store, tmp_path, "--spec", "spec.yaml", "steps=9")
    assert result.returncode == 0, result.stderr
    params = mlflow.MlflowClient().get_run(only_run_id(store)).data.params
    assert (params["seed"], params["steps"]) == ("5", "9")

    by_job_field = run_command([sys.executable, "-m", "projects", "--spec", "spec.yaml"], store, tmp_path)
    assert by_job_field.returncode == 0, by_job_field.stderr
    assert mlflow.MlflowClient().get_run(only_run_id(store)).data.params["steps"] == "7"
