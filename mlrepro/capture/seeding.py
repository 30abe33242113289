"""Seed every random number generator and set the determinism switches, then read them back.

What is recorded is what torch reports *after* setting, not what was asked for:
a switch that silently did not take (a CUDA context that already existed, a
thread pool that was already started) shows up in the record and in compare.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

from mlrepro.capture.seed_record import DeterminismState, SeedRecord
from mlrepro.capture.spec import MAX_SEED
from mlrepro.errors import SpecError

# cuBLAS picks reduction strategies per stream unless its workspace is pinned to a
# fixed layout; with deterministic algorithms on, torch refuses affected CUDA ops
# unless one of these two values is set. cuBLAS reads the variable when CUDA
# creates its handles, so it must be in the environment before the first CUDA
# call: setting it afterwards may have no effect, which the record says.
CUBLAS_DETERMINISTIC_CONFIGS = (":4096:8", ":16:8")


def read_determinism_state() -> DeterminismState:
    """Read the determinism switches without changing any of them."""
    return DeterminismState(
        deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn_deterministic=torch.backends.cudnn.deterministic,
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        cuda_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        intra_op_threads=torch.get_num_threads(),
        interop_threads=torch.get_num_interop_threads(),
        cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        # Python fixes string hashing at start-up; a running process can only report it.
        hash_randomization=bool(sys.flags.hash_randomization),
        python_hash_seed=os.environ.get("PYTHONHASHSEED"),
    )


def seed_everything(seed: int, deterministic: bool = True, threads: int | None = None) -> SeedRecord:
    """Seed Python, NumPy, torch (CPU and every CUDA device) and set the determinism switches.

    ``threads`` pins torch's intra-op thread count: CPU kernels split reductions
    by thread, so the count is part of the result. ``None`` leaves it as it is
    (it is recorded either way).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SpecError(f"seed: must be a whole number from 0 to {MAX_SEED} (got {seed!r})")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SpecError(f"threads: must be a whole number >= 1 (got {threads!r})")

    cuda_was_initialized = torch.cuda.is_initialized()
    if deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC_CONFIGS:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC_CONFIGS[0]

    seed_generators(seed)

    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        # benchmark mode times several kernels on the first call and keeps the
        # fastest, which can differ between runs; off means one fixed choice.
        torch.backends.cudnn.benchmark = False
    use_deterministic_algorithms(deterministic)

    if threads is not None:
        torch.set_num_threads(threads)

    return SeedRecord(
        seed=seed,
        deterministic_requested=deterministic,
        cuda_initialized_before_cublas_config=cuda_was_initialized,
        state=read_determinism_state(),
    )


# Inductor (torch.compile's compiler) reads this when it is first imported; see below.
INDUCTOR_DETERMINISTIC_ENV = "TORCHINDUCTOR_DETERMINISTIC"


def use_deterministic_algorithms(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)``, without making every run import Inductor.

    torch's function sets the eager switch and ``torch._inductor.config.deterministic``, and
    importing that config imports Inductor and Dynamo: two seconds of every run's start here,
    for a compiler most jobs never call. Inductor takes the same setting from
    ``TORCHINDUCTOR_DETERMINISTIC`` when it is imported, so where it is not imported yet the
    variable says it, and a later ``torch.compile`` compiles deterministically all the same.
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode)
        return
    os.environ[INDUCTOR_DETERMINISTIC_ENV] = "1" if mode else "0"
    torch._C._set_deterministic_algorithms(mode)


def seed_generators(seed: int) -> None:
    """Seed the global generators only: Python's ``random``, NumPy's, torch's CPU and CUDA ones."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device, lazily if CUDA is not up yet
    torch.cuda.manual_seed_all(seed)


def seed_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed.

    Forked workers inherit the parent's NumPy state, so without this every worker
    draws the same "random" augmentations. torch gives each worker its own seed
    (base seed + worker id, the base drawn from the loader's generator), so
    deriving from it keeps workers apart and the whole run repeatable.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator for a DataLoader's ``generator=``: shuffle order and worker seeds come from it, not the global RNG."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
