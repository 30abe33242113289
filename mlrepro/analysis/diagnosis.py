"""Why two runs differ: rank what differs between them by how likely it is to break bitwise equality.

Pure: two runs' spec fields and environment facts in, ranked and explained differences out. The order is
the order in which a person should look: other code (another script, or changed
sources of the job) computes something else; a different device or GPU model makes
equal bits unlikely on its own; so does another number of processes, another
communication backend or DDP bucket size; another library version changes kernels; then
the determinism switches, the thread count, the seed, the other spec fields,
and last the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict


class Category(IntEnum):
    """Lower is more likely to break bitwise equality."""

    CODE = 0
    DEVICE = 1
    DISTRIBUTED = 2
    VERSIONS = 3
    DETERMINISM = 4
    THREADS = 5
    SEED = 6
    SPEC = 7
    REPOSITORY = 8
    OTHER = 9


_TF32 = "TF32 rounds float32 matmul and convolution inputs to 10 mantissa bits on Ampere and newer GPUs"
_THREADS = "CPU kernels split reductions across threads, so another thread count sums in another order"
_KERNELS = "another release may change kernels and the order in which they reduce"
_WORLD = ("another number of processes: each rank trains on another shard of every batch, and DDP averages "
          "gradients over another number of ranks")
_BUCKETS = ("DDP all-reduces gradients bucket by bucket: another bucket size groups them, and sums them, "
            "in another order (pytorch issue 30509)")

# (source, key, category, what it does). A key ending in "." matches every key it starts.
_RULES: list[tuple[str, str, Category, str]] = [
    ("environment", "code.entry", Category.CODE, "another module or script ran the job: the same spec, other code"),
    ("environment", "code.source_digest", Category.CODE, "the job's own source files differ"),
    ("spec", "device", Category.DEVICE, "CPU and GPU kernels compute in different orders"),
    ("environment", "run.device", Category.DEVICE, "CPU and GPU kernels compute in different orders"),
    ("environment", "gpu.name", Category.DEVICE, "another GPU model runs other kernels, and cuDNN chooses by model"),
    ("environment", "gpu.capability", Category.DEVICE, "another GPU architecture runs other kernels"),
    ("environment", "env.CUDA_VISIBLE_DEVICES", Category.DEVICE, "the run may have used another GPU"),
    ("environment", "cpu.model", Category.DEVICE, "another CPU may run other vector kernels (AVX2, AVX-512) that round differently"),
    ("spec", "nproc", Category.DISTRIBUTED, _WORLD),
    ("environment", "distributed.world_size", Category.DISTRIBUTED, _WORLD),
    ("environment", "distributed.backend", Category.DISTRIBUTED,
     "NCCL and gloo all-reduce gradients with other algorithms, which sum in other orders"),
    ("spec", "bucket_cap_mb", Category.DISTRIBUTED, _BUCKETS),
    ("environment", "distributed.bucket_cap_mb", Category.DISTRIBUTED, _BUCKETS),
    ("environment", "distributed.devices", Category.DISTRIBUTED, "the ranks trained on other devices, or there were other ranks"),
    ("environment", "env.NCCL_", Category.DISTRIBUTED,
     "NCCL's algorithm and protocol (NCCL_ALGO, NCCL_PROTO, ...) decide the order in which it sums"),
    ("environment", "env.TORCH_NCCL_", Category.DISTRIBUTED, "changes how NCCL collectives run"),
    ("environment", "env.GLOO_", Category.DISTRIBUTED, "changes how gloo connects and reduces"),
    ("environment", "torch.version", Category.VERSIONS, f"torch: {_KERNELS}"),
    ("environment", "cuda.version", Category.VERSIONS, f"CUDA: {_KERNELS}"),
    ("environment", "cudnn.version", Category.VERSIONS, f"cuDNN: {_KERNELS}"),
    ("environment", "gpu.driver", Category.VERSIONS, "the GPU driver compiles and schedules kernels"),
    ("environment", "torchvision.version", Category.VERSIONS, "torchvision: data transforms and models may compute differently"),
    ("environment", "numpy.version", Category.VERSIONS, "NumPy: random streams and data preparation may change"),
    ("spec", "deterministic", Category.DETERMINISM, "deterministic=false leaves cuDNN and torch free to pick nondeterministic kernels"),
    ("environment", "determinism.cudnn_benchmark", Category.DETERMINISM,
     "cudnn.benchmark picks kernels by timing them on first use, so the choice (and the bits) can change from run to run"),
    ("environment", "determinism.cudnn_deterministic", Category.DETERMINISM,
     "with cudnn.deterministic off, cuDNN may use algorithms that accumulate with atomics in a varying order"),
    ("environment", "determinism.deterministic_algorithms", Category.DETERMINISM,
     "without torch.use_deterministic_algorithms(True), ops such as index_add and scatter_add on CUDA add in a varying order"),
    ("environment", "determinism.deterministic_warn_only", Category.DETERMINISM,
     "warn-only mode lets nondeterministic ops run with a warning instead of stopping them"),
    ("environment", "determinism.cudnn_allow_tf32", Category.DETERMINISM, _TF32),
    ("environment", "determinism.cuda_matmul_allow_tf32", Category.DETERMINISM, _TF32),
    ("environment", "determinism.float32_matmul_precision", Category.DETERMINISM, _TF32),
    ("environment", "env.NVIDIA_TF32_OVERRIDE", Category.DETERMINISM, _TF32),
    ("environment", "env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", Category.DETERMINISM, _TF32),
    ("environment", "env.CUBLAS_WORKSPACE_CONFIG", Category.DETERMINISM,
     "without a fixed cuBLAS workspace (:4096:8 or :16:8) cuBLAS may split reductions differently"),
    ("environment", "env.OPENBLAS_CORETYPE", Category.DETERMINISM, "selects OpenBLAS's kernel family, which rounds differently"),
    ("environment", "env.MKL_CBWR", Category.DETERMINISM, "MKL's conditional bitwise reproducibility mode selects its kernel path"),
    ("environment", "env.KMP_DETERMINISTIC_REDUCTION", Category.DETERMINISM, "OpenMP reductions in a fixed or a free order"),
    ("spec", "threads", Category.THREADS, _THREADS),
    ("environment", "determinism.intra_op_threads", Category.THREADS, _THREADS),
    ("environment", "env.OMP_NUM_THREADS", Category.THREADS, _THREADS),
    ("environment", "env.MKL_NUM_THREADS", Category.THREADS, _THREADS),
    ("environment", "env.OPENBLAS_NUM_THREADS", Category.THREADS, _THREADS),
    ("environment", "determinism.interop_threads", Category.THREADS,
     "inter-op threads run independent ops side by side; this rarely changes bits"),
    ("spec", "seed", Category.SEED, "another seed draws other initial weights, dropout masks and shuffle order"),
    ("environment", "env.PYTHONHASHSEED", Category.SEED, "string hashing orders sets and dicts of strings, and what is built from them"),
    ("environment", "determinism.hash_randomization", Category.SEED,
     "string hashing orders sets and dicts of strings, and what is built from them"),
    ("spec", "num_workers", Category.SPEC,
     "the shuffle order does not depend on it, but randomness drawn inside workers does"),
    ("spec", "metric", Category.OTHER, "only the name the losses are logged under"),
    ("spec", "checkpoint_every", Category.OTHER, "checkpoints only read the state; they do not change the numbers"),
    ("spec", "fingerprint_every", Category.OTHER, "fingerprints only read the weights and gradients; they do not change the numbers"),
    ("spec", "resume_from", Category.OTHER, "a resumed run continues bit for bit from its checkpoint"),
    ("spec", "", Category.SPEC, "a different setting trains something else"),
    ("environment", "git.untracked", Category.OTHER, "untracked files did not run; the job's sources are code.source_digest"),
    ("environment", "git.", Category.REPOSITORY,
     "the repository changed; the files the job ran are compared by code.source_digest"),
    ("environment", "", Category.OTHER, "recorded for completeness; rarely changes the numbers"),
]


class Difference(BaseModel):
    """A spec field or environment fact that differs (``None`` where a run lacks it), and how it can change the bits."""

    model_config = ConfigDict(frozen=True)

    source: Literal["spec", "environment"]
    key: str
    value_a: str | None
    value_b: str | None
    category: str
    explanation: str


def _matches(rule_key: str, key: str) -> bool:
    """A rule key ending in "." (or empty) covers every key it starts; any other names one key."""
    return key.startswith(rule_key) if rule_key.endswith(".") or not rule_key else key == rule_key


def _explain(source: str, key: str) -> tuple[Category, str]:
    # The last rule of each source is a catch-all, so every key finds one.
    return next((category, text) for rule_source, rule_key, category, text in _RULES
                if rule_source == source and _matches(rule_key, key))


def differences(
    spec_a: Mapping[str, str], spec_b: Mapping[str, str], environment_a: Mapping[str, str], environment_b: Mapping[str, str]
) -> list[Difference]:
    """Every differing field and fact, most likely cause first.

    Within a category the spec field (the cause) comes before the environment
    fact that records its effect: ``threads`` before ``determinism.intra_op_threads``.
    """
    found = []
    for source, a, b in (("spec", spec_a, spec_b), ("environment", environment_a, environment_b)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) == b.get(key):
                continue
            category, explanation = _explain(source, key)
            difference = Difference(source=source, key=key, value_a=a.get(key), value_b=b.get(key),
                                    category=category.name.lower(), explanation=explanation)
            found.append((category, source != "spec", difference))
    found.sort(key=lambda entry: entry[:2])
    return [difference for _, _, difference in found]


def diagnose(identical: bool, ranked: list[Difference], environment_a: Mapping[str, str],
             environment_b: Mapping[str, str]) -> str:
    """One sentence on the verdict's most likely reason."""
    if identical:
        return "identical bit for bit" + ("; the differences listed did not change the losses" if ranked else "")
    if ranked:
        first = ranked[0]
        return f"most likely cause: {first.key} ({first.value_a} | {first.value_b}): {first.explanation}"
    switch = "determinism.deterministic_algorithms"
    if environment_a.get(switch) == environment_b.get(switch) == "true":
        return (
            "nothing recorded differs, and torch.use_deterministic_algorithms(True) was already on in both runs: "
            "look for randomness mlrepro does not reach (an unseeded generator of your own, files read in "
            "directory order, a custom CUDA kernel using atomics)"
        )
    return (
        "nothing recorded differs: a nondeterministic operation is the likely cause; run with "
        "torch.use_deterministic_algorithms(True) (spec deterministic=true) and torch raises at the first one, naming it"
    )
