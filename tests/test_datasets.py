"""The data a run trained on: a dataset's digest from its content (cached by size and modification time),
recorded through MLflow's dataset tracking, read back checked."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import datasets
import mlflow
import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, Subset, TensorDataset

import mlrepro.capture.datasets
from mlrepro import load_run, start_run
from mlrepro.analysis.compare import compare_logged_runs
from mlrepro.capture.datasets import CACHE_DIR_ENV, describe_dataset
from mlrepro.errors import DamagedRecordError, DatasetError
from mlrepro.replay.reproduce import data_drift
from mlrepro.store.datasets import log_dataset
from projects.linefit.spec import LineFitSpec


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "file-digests.json"


def folder_of_data(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.bin").write_bytes(bytes(range(256)) * 40)
    (root / "labels.txt").write_text("cat\ndog\n")
    return root


def test_a_folders_digest_is_its_content_and_a_byte_changes_it(tmp_path: Path) -> None:
    data = folder_of_data(tmp_path / "data")
    first = describe_dataset(data)
    assert (first.name, first.source_type, first.path) == ("data", "local", data.resolve())
    (data / ".DS_Store").write_bytes(b"not data")  # hidden files are not data
    assert describe_dataset(data).digest == first.digest
    image = data / "images" / "a.bin"
    changed = bytearray(image.read_bytes())
    changed[1000] ^= 1
    image.write_bytes(bytes(changed))
    assert describe_dataset(data).digest != first.digest
    image.rename(data / "images" / "b.bin")  # the same bytes under another name: another dataset
    assert len({describe_dataset(data).digest, first.digest}) == 2


def test_a_files_content_is_read_once_until_its_size_or_modification_time_changes(tmp_path: Path, cache: Path) -> None:
    data = folder_of_data(tmp_path / "data")
    digest = describe_dataset(data).digest
    entries = json.loads(cache.read_text())
    key = str((data / "labels.txt").resolve())
    entries[key][2] = "0" * 64  # what the cache says is taken while the file's stat agrees
    cache.write_text(json.dumps(entries))
    assert describe_dataset(data).digest != digest
    (data / "labels.txt").write_text("cat\ndog\n")  # rewritten: its modification time moves, it is read again
    assert describe_dataset(data).digest == digest
    cache.write_text("[not a cache")  # damaged: ignored, every file read again
    assert describe_dataset(data).digest == digest


def test_a_hugging_face_dataset_is_known_by_its_rows_and_order_even_where_its_fingerprint_is_random(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = datasets.Dataset.from_dict({"x": list(range(50)), "label": [i % 3 for i in range(50)]})
    unpicklable = (i for i in range(1))

    def plus_one(row: dict) -> dict:  # closes over a generator: the library cannot hash it, and warns
        _ = unpicklable
        return {"y": row["x"] + 1}

    once, again = rows.map(plus_one), rows.map(plus_one)
    assert once._fingerprint != again._fingerprint  # the library's own name for the same rows: random
    record = describe_dataset(once)
    assert (record.name, record.source_type) == ("Dataset", "hf") and describe_dataset(again).digest == record.digest
    assert json.loads(record.source) == {"fingerprint": once._fingerprint, "digest_of": "rows", "rows": 50}
    # Another row, another order (a shuffle keeps its indices), another class-name list: other data.
    changed = datasets.Dataset.from_dict({"x": [*range(49), 99], "label": [i % 3 for i in range(50)]})
    named = rows.cast_column("label", datasets.ClassLabel(names=["cat", "dog", "fox"]))
    digests = {describe_dataset(each).digest for each in
               (rows, changed, rows.shuffle(seed=1), rows.shuffle(seed=2), named)}
    assert len(digests) == 5
    assert describe_dataset(rows.shuffle(seed=1)).digest == describe_dataset(rows.shuffle(seed=1)).digest
    # Above the bound its rows are not read: the library's fingerprint names it, and the record says so.
    monkeypatch.setattr(mlrepro.capture.datasets, "HF_ROWS_BYTES", 0)
    large = describe_dataset(once)
    assert large.digest == once._fingerprint and json.loads(large.source)["digest_of"] == "fingerprint"


def test_datasets_in_memory_are_known_by_what_draws_them_or_by_their_tensors() -> None:
    fake = torchvision.datasets.FakeData(size=100, image_size=(3, 8, 8), num_classes=10, random_offset=7)
    record = describe_dataset(Subset(fake, range(10)))  # the data a Subset picks from
    assert record.name == "FakeData" and record.source_type == "code"
    assert json.loads(record.source)["torchvision.datasets.FakeData"]["random_offset"] == 7
    other = torchvision.datasets.FakeData(size=100, image_size=(3, 8, 8), num_classes=10, random_offset=8)
    assert describe_dataset(other).digest != record.digest
    points = TensorDataset(torch.arange(6.0).reshape(3, 2))
    moved = TensorDataset(torch.arange(6.0).reshape(3, 1, 2))
    assert describe_dataset(points).digest != describe_dataset(moved).digest  # same bytes, another shape
    numpy_dataset = mlflow.data.from_numpy(np.arange(10), name="arr")
    taken = describe_dataset(numpy_dataset)
    assert (taken.name, taken.digest) == ("arr", numpy_dataset.digest)


def test_what_mlrepro_cannot_read_or_mlflow_would_refuse_is_one_line(tmp_path: Path) -> None:
    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

    with pytest.raises(DatasetError, match="cannot read a .*Rows's content; pass the folder or file it reads"):
        describe_dataset(Rows())
    assert describe_dataset(Rows(), digest="v1.2").digest == "v1.2"
    with pytest.raises(DatasetError, match="log_dataset: digest: .*36"):
        describe_dataset(Rows(), digest="x" * 37)
    with pytest.raises(DatasetError, match="does not exist"):
        describe_dataset(tmp_path / "nowhere")


def test_a_runs_datasets_reach_mlflows_dataset_tracking_once_and_read_back(tmp_path: Path, store: str) -> None:
    data = folder_of_data(tmp_path / "data")
    with start_run(LineFitSpec(steps=1)) as run:
        record = run.log_dataset(data, name="images")
        run.log_dataset(data, name="images")  # again: still one input
        run.log_loss(1.0)
    inputs = mlflow.MlflowClient().get_run(run.run_id).inputs.dataset_inputs
    assert [(entry.dataset.name, entry.dataset.digest, [tag.value for tag in entry.tags]) for entry in inputs] == [
        ("images", record.digest, ["train"])]
    assert load_run(run.run_id).datasets == {"images": record}


def test_a_forged_dataset_record_is_damaged(store: str) -> None:
    with start_run(LineFitSpec(steps=1)) as run:
        run.log_loss(1.0)
    client = mlflow.MlflowClient()
    log_dataset(client, run.run_id, name="x", digest="abc", source_type="local", source="{}", context="c" * 200)
    with pytest.raises(DamagedRecordError, match=f"run {run.run_id}: its dataset 'x' is damaged: context"):
        load_run(run.run_id)


def test_batches_shuffled_by_an_unseeded_generator_differ_from_step_0_in_the_data(store: str) -> None:
    """Two runs whose loader draws its order from a generator nobody seeded: the batches part at step 0,
    and compare says so, not that a gradient did."""
    points = TensorDataset(torch.linspace(-1, 1, 32).reshape(16, 2), torch.linspace(0, 1, 16).reshape(16, 1))

    def one_run() -> str:
        with start_run(LineFitSpec(steps=8, fingerprint_every=1)) as run:
            model, loss = torch.nn.Linear(2, 1), torch.nn.MSELoss()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            run.watch(model, optimizer, loss=loss)
            unseeded = torch.Generator().manual_seed(secrets.randbits(62))  # what no spec records
            for inputs, targets in DataLoader(points, batch_size=2, shuffle=True, generator=unseeded):
                optimizer.zero_grad()
                value = loss(model(inputs), targets)
                value.backward()
                optimizer.step()
                run.log_loss(value)
        return run.run_id

    verdict = compare_logged_runs(load_run(one_run()), load_run(one_run()))
    assert verdict.verdict == "different" and verdict.tensors is not None
    assert (verdict.tensors.phase, verdict.tensors.tensor, verdict.tensors.first_divergent_step) == (
        "data", "batch.inputs", 0)
    assert "the batches differ from step 0: the data, its order or its augmentation changed" in verdict.diagnosis


def test_reproduce_is_told_which_recorded_data_on_disk_changed_or_is_gone(tmp_path: Path) -> None:
    data = folder_of_data(tmp_path / "data")
    recorded = {"images": describe_dataset(data, name="images"),
                "drawn": describe_dataset(TensorDataset(torch.ones(2)), name="drawn")}  # no path: not checked
    assert data_drift(recorded) == []
    (data / "labels.txt").write_text("cat\nowl\n")
    (changed,) = data_drift(recorded)
    assert (changed.key, changed.value_a, changed.source) == ("data.images", recorded["images"].digest, "data")
    assert changed.value_b != changed.value_a
    renamed = tmp_path / "moved"
    data.rename(renamed)
    (gone,) = data_drift(recorded)
    assert gone.value_b == f"(not on disk at {data.resolve()})"


def test_check_is_told_when_the_data_differs_from_the_last_run_of_the_same_spec(tmp_path: Path, store: str) -> None:
    from dataclasses import replace

    from mlrepro.replay.check import _data_changed

    data = folder_of_data(tmp_path / "data")
    with start_run(LineFitSpec(steps=1)) as run:
        then = run.log_dataset(data, name="images")
        run.log_loss(1.0)
    logged = load_run(run.run_id)
    client = mlflow.MlflowClient()
    assert _data_changed(client, logged) == []  # the same data as the run of that spec
    (data / "labels.txt").write_text("cat\nowl\n")
    leg = replace(logged, datasets={"images": describe_dataset(data, name="images")})  # what a check's leg reads now
    assert _data_changed(client, leg) == [
        f"data.images: {then.digest} in run {run.run_id}, {leg.datasets['images'].digest} now"]
    other_spec = replace(leg, spec=LineFitSpec(steps=2))
    assert _data_changed(client, other_spec) == []  # no run of that spec recorded data
