"""The CIFAR-10 job: repeatable with shuffling and two workers, on fake data and on real-format files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro import load_run
from mlrepro.errors import SpecError
from mlrepro.spec import Cifar10Spec, build_spec
from tests.conftest import REPO, assert_one_line_error, mlflow_run, mlrepro_cli, only_run_id, run_command
from tests.helpers.cifar_files import write_cifar10

ON_TEST_FILES = str(REPO / "tests" / "helpers" / "run_cifar10_on_test_files.py")
SMALL = ["epochs=2", "train_limit=120", "test_limit=40", "num_workers=2"]


def cifar10(store: str, cwd: Path, *assignments: str) -> str:
    """One CIFAR-10 run in its own process; returns its run id."""
    result = run_command([sys.executable, "-m", "projects.cifar10", *assignments], store, cwd, PYTHONHASHSEED="0")
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_id(store)


def compare(store: str, cwd: Path, a: str, b: str) -> tuple[int, dict]:
    result = mlrepro_cli(store, cwd, "compare", "--json", a, b)
    return result.returncode, json.loads(result.stdout)


def test_mlflow_run_on_fake_data_repeats_and_another_seed_differs(tmp_path: Path, store: str) -> None:
    def launched(*params: str) -> str:
        small = ["dataset=fake", "train_limit=200", "test_limit=40", "epochs=1"]
        result = mlflow_run(store, tmp_path, *small, *params, entry_point="cifar10")
        assert result.returncode == 0, result.stderr[-3000:]
        return only_run_id(store)

    first, second, other = launched(), launched(), launched("seed=5")
    run = mlflow.MlflowClient().get_run(first)
    assert run.data.params["num_workers"] == "2" and run.data.params["dataset"] == "fake"

    assert compare(store, tmp_path, first, second)[0] == 0
    code, verdict = compare(store, tmp_path, first, other)
    assert code == 1 and verdict["first_divergent_step"] == 0
    assert [(d["key"], d["value_a"], d["value_b"]) for d in verdict["differences"]] == [("seed", "3", "5")]


def test_the_real_loader_on_pickle_format_files_repeats_through_data_dir(tmp_path: Path, store: str) -> None:
    write_cifar10(tmp_path / "cifar", images_per_batch=24, test_images=40)  # 120 training images

    def run(*assignments: str) -> str:
        args = [sys.executable, ON_TEST_FILES, "dataset=cifar10", f"data_dir={tmp_path / 'cifar'}", *assignments]
        result = run_command(args, store, tmp_path, PYTHONHASHSEED="0")
        assert result.returncode == 0, result.stderr[-3000:]
        return only_run_id(store)

    first, second, other = run(*SMALL), run(*SMALL), run(*SMALL, "seed=4")
    logged = load_run(first)
    assert len(logged.losses) == 2 * 120 // 4  # every step of both epochs
    accuracy = mlflow.MlflowClient().get_metric_history(first, "test_accuracy")
    assert sorted(m.step for m in accuracy) == [0, 1] and all(0 <= m.value <= 1 for m in accuracy)

    assert compare(store, tmp_path, first, second)[0] == 0
    code, verdict = compare(store, tmp_path, first, other)
    assert code == 1 and verdict["first_divergent_step"] == 0


def test_the_shuffle_order_does_not_depend_on_the_number_of_workers(tmp_path: Path, store: str) -> None:
    with_workers = cifar10(store, tmp_path, "dataset=fake", *SMALL)
    without = cifar10(store, tmp_path, "dataset=fake", *SMALL[:-1], "num_workers=0")
    code, verdict = compare(store, tmp_path, with_workers, without)
    assert code == 0, verdict
    assert [d["key"] for d in verdict["differences"]] == ["num_workers"]


def test_runs_that_differ_only_in_thread_count_name_it_first_with_its_explanation(tmp_path: Path, store: str) -> None:
    one = cifar10(store, tmp_path, "dataset=fake", *SMALL, "threads=1")
    two = cifar10(store, tmp_path, "dataset=fake", *SMALL, "threads=2")
    _, verdict = compare(store, tmp_path, one, two)
    named = [(d["source"], d["key"], d["value_a"], d["value_b"]) for d in verdict["differences"]]
    assert named == [("spec", "threads", "1", "2"), ("environment", "determinism.intra_op_threads", "1", "2")]
    assert verdict["differences"][0]["explanation"].startswith("CPU kernels split reductions across threads")
    if not verdict["identical"]:  # on this machine's CPU they differ; the diagnosis then names the cause
        assert verdict["diagnosis"].startswith("most likely cause: threads (1 | 2): CPU kernels split")

    text = mlrepro_cli(store, tmp_path, "compare", one, two).stdout.splitlines()
    first_difference = text.index(next(line for line in text if line.startswith("differences"))) + 1
    assert text[first_difference].split()[:5] == ["spec", "threads", "1", "|", "2"]


def test_missing_data_says_what_to_do_and_the_run_ends_failed(tmp_path: Path, store: str) -> None:
    result = run_command(
        [sys.executable, "-m", "projects.cifar10", f"data_dir={tmp_path / 'empty'}"], store, tmp_path
    )
    assert_one_line_error(result, "CIFAR-10 is not in", "could not be downloaded", "-P dataset=fake")
    run = mlflow.MlflowClient().get_run(only_run_id(store))
    assert run.info.status == "FAILED"
    assert "could not be downloaded" in run.data.tags["mlrepro.error"]


def test_fake_images_are_drawn_from_the_seed() -> None:
    from projects.cifar10.data import load_datasets

    def first_image(seed: int):
        train, _ = load_datasets(Cifar10Spec(dataset="fake", seed=seed, train_limit=2))
        return train[0][0]

    assert first_image(3).equal(first_image(3))
    assert not first_image(3).equal(first_image(4))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dataset": "imagenet"}, "dataset: must be 'cifar10' or 'fake'"),
        ({"num_workers": "-1"}, "num_workers: must be from 0 to 256"),
        ({"batch_size": "0"}, "batch_size: must be from 1"),
        ({"momentum": "-0.5"}, "momentum: must be at least 0"),
        ({"epochs": "0"}, "epochs: must be from 1"),
        ({"train_limit": "-3"}, "train_limit: must be at least 0"),
    ],
)
def test_bad_cifar10_values_give_one_line(values: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_spec(Cifar10Spec, values)
