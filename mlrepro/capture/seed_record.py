"""What seeding did, as a run records it (``mlrepro/seeding.json``): plain data, without torch.

``mlrepro.capture.seeding`` fills it in a job; compare reads it back from any run, and
must not pay for torch to do so.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DeterminismState(BaseModel):
    """The switches that decide whether the same inputs give the same bits, as torch reports them."""

    model_config = ConfigDict(frozen=True)

    deterministic_algorithms: bool
    deterministic_warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cudnn_allow_tf32: bool
    cuda_matmul_allow_tf32: bool
    float32_matmul_precision: str
    intra_op_threads: int
    interop_threads: int
    cublas_workspace_config: str | None
    hash_randomization: bool
    python_hash_seed: str | None


class SeedRecord(BaseModel):
    """What ``seed_everything`` did: the seed, the request, and the effective state afterwards."""

    model_config = ConfigDict(frozen=True)

    seed: int
    deterministic_requested: bool
    cuda_initialized_before_cublas_config: bool
    state: DeterminismState
