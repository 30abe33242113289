"""The CIFAR-10 job: repeatable with shuffling and two workers, on fake data and on real-format files.

Two tests compare a run of a process of its own (`mlflow run`, the real loader's script) with the same
spec run in this process; the rest run the job here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest
import torchvision.datasets.cifar

from mlrepro import load_run
from mlrepro.capture.spec import build_spec
from mlrepro.cli.job import job_command
from mlrepro.cli.main import main
from mlrepro.errors import SpecError
from projects.cifar10.spec import Cifar10Spec
from projects.cifar10.train import train
from tests.conftest import (
    REPO,
    assert_one_line_error_here,
    mlflow_run,
    only_run_id,
    run_command,
    run_here,
)
from tests.helpers.cifar_files import write_cifar10

ON_TEST_FILES = str(REPO / "tests" / "helpers" / "run_cifar10_on_test_files.py")
SMALL = ["epochs=2", "train_limit=120", "test_limit=40", "num_workers=2"]
CIFAR10 = job_command(Cifar10Spec, train)


def cifar10_here(*assignments: str) -> str:
    """One CIFAR-10 run in this process, its loader's workers forked from it; returns its run id."""
    result = run_here(CIFAR10, *assignments)
    assert result.exit_code == 0, result.stderr[-3000:]
    return only_run_id(mlflow.get_tracking_uri())


def compare_json(a: str, b: str) -> tuple[int, dict]:
    result = run_here(main, "compare", "--json", a, b)
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.e2e
def test_mlflow_run_of_the_entry_point_repeats_a_run_of_another_process_bit_for_bit(tmp_path: Path, store: str) -> None:
    small = ["dataset=fake", "train_limit=200", "test_limit=40", "epochs=1"]
    launched = mlflow_run(store, tmp_path, *small, entry_point="cifar10")
    assert launched.returncode == 0, launched.stderr[-3000:]
    first = only_run_id(store)
    run = mlflow.MlflowClient().get_run(first)
    assert run.data.params["num_workers"] == "2" and run.data.params["dataset"] == "fake"

    here = cifar10_here(*small)  # the MLproject's defaults, filled in by the spec here
    code, verdict = compare_json(first, here)
    assert code == 0, verdict
    assert verdict["losses"]["steps_in_both"] == 50


@pytest.mark.e2e
def test_the_real_loader_on_pickle_format_files_repeats_through_data_dir(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path / "cifar", images_per_batch=24, test_images=40)  # 120 training images
    words = ["dataset=cifar10", f"data_dir={tmp_path / 'cifar'}", *SMALL]
    result = run_command([sys.executable, ON_TEST_FILES, *words], store, tmp_path, PYTHONHASHSEED="0")
    assert result.returncode == 0, result.stderr[-3000:]
    first = only_run_id(store)
    logged = load_run(first)
    assert len(logged.losses) == 2 * 120 // 4  # every step of both epochs
    accuracy = mlflow.MlflowClient().get_metric_history(first, "test_accuracy")
    assert sorted(m.step for m in accuracy) == [0, 1] and all(0 <= m.value <= 1 for m in accuracy)

    # The same files read by torchvision's loader in this process (its MD5 check off, as in ON_TEST_FILES).
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    second, other = cifar10_here(*words), cifar10_here(*words, "seed=4")
    assert compare_json(first, second)[0] == 0
    code, verdict = compare_json(second, other)
    assert code == 1 and verdict["first_divergent_step"] == 0
    assert [(d["key"], d["value_a"], d["value_b"]) for d in verdict["differences"]] == [("seed", "3", "4")]


def test_the_shuffle_order_does_not_depend_on_the_number_of_workers(store: str) -> None:
    with_workers = cifar10_here("dataset=fake", *SMALL)
    without = cifar10_here("dataset=fake", *SMALL[:-1], "num_workers=0")
    code, verdict = compare_json(with_workers, without)
    assert code == 0, verdict
    assert [d["key"] for d in verdict["differences"]] == ["num_workers"]


def test_runs_that_differ_only_in_thread_count_name_it_first_with_its_explanation(store: str) -> None:
    one = cifar10_here("dataset=fake", *SMALL, "threads=1")
    two = cifar10_here("dataset=fake", *SMALL, "threads=2")
    _, verdict = compare_json(one, two)
    named = [(d["source"], d["key"], d["value_a"], d["value_b"]) for d in verdict["differences"]]
    assert named == [("spec", "threads", "1", "2"), ("environment", "determinism.intra_op_threads", "1", "2")]
    assert verdict["differences"][0]["explanation"].startswith("CPU kernels split reductions across threads")
    if not verdict["identical"]:  # on this machine's CPU they differ; the diagnosis then names the cause
        assert verdict["diagnosis"].startswith("most likely cause: threads (1 | 2): CPU kernels split")

    text = run_here(main, "compare", one, two).stdout.splitlines()
    first_difference = text.index(next(line for line in text if line.startswith("differences"))) + 1
    assert text[first_difference].split()[:5] == ["spec", "threads", "1", "|", "2"]


def test_missing_data_says_what_to_do_and_the_run_ends_failed(tmp_path: Path, store: str) -> None:
    result = run_here(CIFAR10, f"data_dir={tmp_path / 'empty'}")
    assert_one_line_error_here(result, "CIFAR-10 is not in", "could not be downloaded", "-P dataset=fake")
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


def test_one_byte_of_one_training_image_changed_names_the_dataset_first_and_the_step_its_batch_is_used(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    from torch.utils.data import DataLoader

    from mlrepro import make_generator

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = write_cifar10(tmp_path / "cifar", images_per_batch=24, test_images=40)  # 120 training images
    words = ["dataset=cifar10", f"data_dir={tmp_path / 'cifar'}", "epochs=1", "train_limit=120", "test_limit=40",
             "num_workers=0", "fingerprint_every=1"]
    before = cifar10_here(*words)
    changed_image = 30  # the 7th image of data_batch_2
    with open(folder / "data_batch_2", "rb") as file:
        batch = pickle.load(file)
    batch["data"][changed_image - 24, 100] ^= 1  # one byte of one image
    with open(folder / "data_batch_2", "wb") as file:
        pickle.dump(batch, file, protocol=2)
    after = cifar10_here(*words)

    # The step whose batch first holds that image: the job's loader draws its order from the seed.
    order = DataLoader(range(120), batch_size=4, shuffle=True, generator=make_generator(3))
    used_at = next(step for step, indices in enumerate(order) if changed_image in indices.tolist())
    code, verdict = compare_json(before, after)
    assert code == 1
    assert verdict["differences"][0]["key"] == "data.CIFAR10" and verdict["differences"][0]["source"] == "data"
    assert [d["key"] for d in verdict["differences"]] == ["data.CIFAR10"]
    assert (verdict["tensors"]["phase"], verdict["tensors"]["tensor"]) == ("data", "batch.inputs")
    assert verdict["tensors"]["first_divergent_step"] == used_at == verdict["first_divergent_step"]
    assert verdict["diagnosis"].startswith("most likely cause: data.CIFAR10")
