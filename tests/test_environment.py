"""Environment capture: every fact as text, nothing raised, nothing changed, no secrets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mlrepro.capture.environment import (
    COLLECTORS,
    UNAVAILABLE,
    UNSET,
    capture_environment,
)
from mlrepro.capture.seeding import read_determinism_state


def test_the_record_names_code_software_hardware_switches_and_variables() -> None:
    facts = capture_environment().facts
    for fact in [
        "python.version", "os.platform",
        "torch.version", "torchvision.version", "numpy.version", "mlflow.version", "pydantic.version",
        "mlrepro.version", "cpu.model", "cpu.count", "cuda.available", "cuda.version", "cudnn.version",
        "gpu.name", "gpu.capability", "determinism.deterministic_algorithms", "determinism.cudnn_benchmark",
        "determinism.intra_op_threads", "determinism.float32_matmul_precision", "env.CUBLAS_WORKSPACE_CONFIG",
        "env.PYTHONHASHSEED",
    ]:
        assert isinstance(facts[fact], str) and facts[fact], fact
    assert facts["torch.version"].startswith(torch.__version__.split("+")[0])
    assert facts["determinism.intra_op_threads"] == str(torch.get_num_threads())
    assert facts["cuda.available"] == str(torch.cuda.is_available()).lower()


def test_a_failing_collector_reports_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise RuntimeError("no such device")

    monkeypatch.setitem(COLLECTORS, "broken.fact", broken)
    assert capture_environment().facts["broken.fact"] == UNAVAILABLE


def test_only_allow_listed_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    facts = capture_environment().facts
    assert "hunter2" not in facts.values()
    assert facts["env.OMP_NUM_THREADS"] == "3"
    assert facts["env.MKL_NUM_THREADS"] == UNSET


def test_capture_changes_no_state() -> None:
    before = read_determinism_state()
    capture_environment()
    assert read_determinism_state() == before
    assert not torch.cuda.is_initialized()  # no CUDA context created just to read a GPU's name


def test_extra_facts_and_a_hash_that_follows_them() -> None:
    base = capture_environment(extra={"run.device": "cpu"})
    assert base.facts["run.device"] == "cpu"
    assert base.hash == capture_environment(extra={"run.device": "cpu"}).hash
    assert base.hash != capture_environment(extra={"run.device": "cuda"}).hash


@pytest.mark.e2e
def test_the_hash_is_stable_across_processes() -> None:
    code = "from mlrepro.capture.environment import capture_environment; print(capture_environment().hash)"
    run = lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout  # noqa: E731
    assert run() == run()
