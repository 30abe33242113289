"""Seeding: every generator repeats across processes, and the record is what torch reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlrepro.capture.seeding import (
    make_generator,
    read_determinism_state,
    seed_everything,
    seed_worker,
)
from mlrepro.errors import SpecError

DRAWS = """
import json, random, sys
import numpy as np, torch
from mlrepro import seed_everything
seed_everything(int(sys.argv[1]))
print(json.dumps([random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randn(2).tolist()]))
"""


def draws_in_new_process(seed: int) -> list:
    result = subprocess.run([sys.executable, "-c", DRAWS, str(seed)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.e2e
def test_every_generator_repeats_in_a_new_process() -> None:
    assert draws_in_new_process(11) == draws_in_new_process(11)
    assert draws_in_new_process(11) != draws_in_new_process(12)


@pytest.fixture
def restore_switches():
    """seed_everything changes process-wide switches; put them back for the other tests."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.set_num_threads(saved[4])
    if saved[5] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[5]


def test_deterministic_sets_the_switches_and_records_them_as_read_back(restore_switches, monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    record = seed_everything(5, deterministic=True, threads=1)

    state = record.state
    assert state == read_determinism_state()
    assert state.deterministic_algorithms and not state.deterministic_warn_only
    assert state.cudnn_deterministic and not state.cudnn_benchmark
    assert state.intra_op_threads == torch.get_num_threads() == 1
    assert state.cublas_workspace_config == os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert record.seed == 5 and record.deterministic_requested
    assert record.cuda_initialized_before_cublas_config is torch.cuda.is_initialized()


def test_a_users_valid_cublas_config_is_kept(restore_switches, monkeypatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert seed_everything(1).state.cublas_workspace_config == ":16:8"


def test_non_deterministic_turns_the_strict_switches_off(restore_switches) -> None:
    state = seed_everything(5, deterministic=False, threads=2).state
    assert not state.deterministic_algorithms and not state.cudnn_deterministic
    assert state.intra_op_threads == 2


@pytest.mark.e2e
def test_hash_randomisation_is_recorded_as_the_process_really_has_it() -> None:
    code = "from mlrepro import seed_everything; r = seed_everything(1); print(r.state.hash_randomization, r.state.python_hash_seed)"
    fixed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED="0"))
    random_ = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"})
    assert fixed.stdout.split() == ["False", "0"]
    assert random_.stdout.split() == ["True", "None"]


@pytest.mark.parametrize(("seed", "threads"), [(-1, None), (2**32, None), (True, None), (1.5, None), (1, 0)])
def test_bad_arguments_are_refused_before_anything_changes(seed, threads) -> None:
    before = read_determinism_state()
    with pytest.raises(SpecError):
        seed_everything(seed, threads=threads)
    assert read_determinism_state() == before


@pytest.mark.e2e
def test_thread_count_changes_cpu_results_so_it_is_pinned() -> None:
    """Why threads are part of the spec: on this machine's CPU a reduction split over
    two threads sums in another order than on one."""
    # Sums over many elements: ATen's parallel_reduce gives each thread its own part of the range and
    # adds the parts' sums, so two threads add in another order than one. Another order can still
    # round to the same float now and then (a small conv's weight gradient, tried here before, did
    # on this machine), so twenty sums are compared: one of them differing is the fact.
    code = """
import sys, torch
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
print([torch.randn(1_000_003).sum().item().hex() for _ in range(20)])
"""
    if os.cpu_count() == 1:
        pytest.skip("one core: two threads cannot run in parallel")
    grad_sum = lambda threads: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code, str(threads)], capture_output=True, text=True, check=True
    ).stdout
    one_thread = grad_sum(1)
    assert grad_sum(1) == one_thread
    assert grad_sum(2) != one_thread


@pytest.mark.e2e
def test_worker_seeding_gives_each_worker_its_own_numpy_draws_and_repeats() -> None:
    code = """
import json
import numpy as np, torch
from torch.utils.data import DataLoader, Dataset
from mlrepro import make_generator, seed_everything, seed_worker

class NumpyNoise(Dataset):
    def __len__(self): return 8
    def __getitem__(self, i): return torch.tensor([i, np.random.randint(1 << 30)])

seed_everything(3)
loader = DataLoader(NumpyNoise(), batch_size=2, shuffle=True, num_workers=2,
                    worker_init_fn=seed_worker, generator=make_generator(3), multiprocessing_context="fork")
print(json.dumps([batch.tolist() for batch in loader]))
"""
    first = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    second = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert first == second
    # batches alternate between worker 0 and worker 1; their first draws must differ
    draws_worker_0 = [pair[1] for pair in first[0]]
    draws_worker_1 = [pair[1] for pair in first[1]]
    assert draws_worker_0 != draws_worker_1
    assert sorted(i for batch in first for i, _ in batch) == list(range(8))


def test_the_loader_generator_fixes_the_shuffle_order() -> None:
    order = lambda g: torch.randperm(10, generator=g).tolist()  # noqa: E731
    assert order(make_generator(1)) == order(make_generator(1))
    assert order(make_generator(1)) != order(make_generator(2))


def test_seed_worker_derives_from_torchs_worker_seed() -> None:
    import numpy as np

    torch.manual_seed(123)
    seed_worker(0)
    a = np.random.rand()
    torch.manual_seed(123)
    seed_worker(0)
    assert np.random.rand() == a


@pytest.mark.e2e
def test_deterministic_mode_does_not_import_inductor_but_a_later_compile_is_deterministic_too() -> None:
    """torch.use_deterministic_algorithms imports Inductor (two seconds of every run's start); seeding
    sets the eager switch itself and leaves Inductor's in the variable it reads when imported."""
    script = (
        "import sys, torch\n"
        "from mlrepro.capture.seeding import seed_everything\n"
        "record = seed_everything(3, deterministic=True)\n"
        "inductor_loaded = 'torch._inductor' in sys.modules\n"
        "import torch._inductor.config as inductor\n"
        "print(inductor_loaded, record.state.deterministic_algorithms, torch.are_deterministic_algorithms_enabled(),"
        " inductor.deterministic)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_DETERMINISTIC"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.stdout.split() == ["False", "True", "True", "True"]
