"""Diagnosis: differences ranked by how likely each is to break bitwise equality, each explained."""

from __future__ import annotations

from mlrepro.analysis.diagnosis import diagnose, differences


def keys(found) -> list[str]:
    return [d.key for d in found]


def test_changed_missing_and_added_keys_are_all_differences() -> None:
    found = differences({"seed": "3", "lr": "0.1", "gone": "x"}, {"seed": "4", "lr": "0.1", "new": "y"}, {}, {})
    assert {(d.key, d.value_a, d.value_b) for d in found} == {("gone", "x", None), ("new", None, "y"), ("seed", "3", "4")}


def test_the_order_is_code_device_versions_switches_threads_seed_spec_repository_then_the_rest() -> None:
    found = differences(
        {"seed": "3", "lr": "0.1", "threads": "1", "width": "16"},
        {"seed": "4", "lr": "0.2", "threads": "2", "width": "32"},
        {"python.version": "3.11", "determinism.cudnn_benchmark": "false", "torch.version": "2.13",
         "gpu.name": "A100", "determinism.intra_op_threads": "1", "git.commit": "abc", "code.entry": "a.py",
         "git.untracked": "0"},
        {"python.version": "3.12", "determinism.cudnn_benchmark": "true", "torch.version": "2.14",
         "gpu.name": "H100", "determinism.intra_op_threads": "2", "git.commit": "def", "code.entry": "b.py",
         "git.untracked": "3"},
    )
    assert keys(found) == [
        "code.entry", "gpu.name", "torch.version", "determinism.cudnn_benchmark", "threads",
        "determinism.intra_op_threads", "seed", "lr", "width", "git.commit", "git.untracked", "python.version",
    ]
    assert [d.category for d in found] == [
        "code", "device", "versions", "determinism", "threads", "threads", "seed", "spec", "spec", "repository",
        "other", "other",
    ]


def test_string_hashing_never_ranks_above_a_spec_field_that_changed() -> None:
    """A `python -m` run (hashing random) against an `mlflow run` run (PYTHONHASHSEED=0) of another lr:
    the lr is the cause; string hashing changes the numbers only where a job iterates a set of strings."""
    found = differences({"seed": "3", "lr": "0.1"}, {"seed": "3", "lr": "0.2"},
                        {"determinism.hash_randomization": "true"},
                        {"determinism.hash_randomization": "false", "env.PYTHONHASHSEED": "0"})
    assert keys(found) == ["lr", "determinism.hash_randomization", "env.PYTHONHASHSEED"]
    assert diagnose(False, found, {}, {}).startswith("most likely cause: lr (0.1 | 0.2)")
    (alone,) = differences({}, {}, {"determinism.hash_randomization": "true"}, {"determinism.hash_randomization": "false"})
    assert alone.category == "hashing" and "only where the job iterates such a set" in alone.explanation


def test_untracked_files_are_never_called_a_code_change() -> None:
    (untracked,) = differences({}, {}, {"git.untracked": "0"}, {"git.untracked": "1"})
    assert untracked.category == "other" and "did not run" in untracked.explanation
    (sources,) = differences({}, {}, {"code.source_digest": "a"}, {"code.source_digest": "b"})
    assert sources.category == "code" and "source files differ" in sources.explanation


def test_each_difference_says_what_it_does() -> None:
    (benchmark,) = differences({}, {}, {"determinism.cudnn_benchmark": "false"}, {"determinism.cudnn_benchmark": "true"})
    assert "picks kernels by timing" in benchmark.explanation
    (workspace,) = differences({}, {}, {"env.CUBLAS_WORKSPACE_CONFIG": "unset"}, {"env.CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    assert "cuBLAS" in workspace.explanation and workspace.category == "determinism"


def test_the_diagnosis_names_the_first_cause() -> None:
    found = differences({"threads": "1"}, {"threads": "2"}, {}, {})
    assert diagnose(False, found, {}, {}).startswith("most likely cause: threads (1 | 2): CPU kernels split")


def test_when_nothing_differs_the_diagnosis_points_at_nondeterministic_ops() -> None:
    off = {"determinism.deterministic_algorithms": "false"}
    on = {"determinism.deterministic_algorithms": "true"}
    assert "torch.use_deterministic_algorithms(True)" in diagnose(False, [], off, off)
    assert "raises at the first one" in diagnose(False, [], off, off)
    assert "was already on in both runs" in diagnose(False, [], on, on)


def test_identical_runs_are_said_to_be_identical_whatever_differs() -> None:
    assert diagnose(True, [], {}, {}) == "identical bit for bit"
    found = differences({"num_workers": "2"}, {"num_workers": "0"}, {}, {})
    assert diagnose(True, found, {}, {}).endswith("the differences listed did not change the losses")


def test_a_dataset_whose_digest_changed_is_ranked_right_after_the_code() -> None:
    found = differences({"seed": "3"}, {"seed": "4"}, {"code.entry": "a.py", "gpu.name": "A100"},
                        {"code.entry": "b.py", "gpu.name": "H100"}, None,
                        {"data.CIFAR10": "1f2e", "data.extra": "same", "drawn_data.FakeData": "aa"},
                        {"data.CIFAR10": "9c0d", "data.extra": "same", "drawn_data.FakeData": "bb"})
    # Data read from disk comes right after the code; data the code draws from the spec, after the spec.
    assert keys(found) == ["code.entry", "data.CIFAR10", "gpu.name", "seed", "drawn_data.FakeData"]
    assert (found[1].source, found[1].category) == ("data", "data")
    assert diagnose(False, found[1:], {}, {}).startswith(
        "most likely cause: data.CIFAR10 (1f2e | 9c0d): the dataset's content differs")
    # A run that recorded no data (logged before mlrepro recorded it) says nothing about its data.
    assert keys(differences({}, {}, {}, {}, None, {"data.CIFAR10": "1f2e"}, {})) == []
