"""Every environment fact a run records, declared once: its key, who collects it, its rank among the
causes of a difference, what it does to the bits, and whether ``reproduce`` checks it before a repeat.

Diagnosis ranks and explains from these declarations, ``reproduce`` takes its drift from them, the
environment's collectors of package versions, switches and variables are made from them, and the
hash covers every fact collected. A test fails when a collector produces a key that has no
declaration here, so a renamed switch cannot fall silently into "rarely changes the numbers".

Runs logged before mlrepro 0.2 tagged every fact as ``mlrepro.<key>`` instead of
``mlrepro.environment.<key>``; ``mlrepro.store.record`` reads both.

Pure data: no torch, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class Category(IntEnum):
    """Lower is more likely to break bitwise equality: the order in which a person should look."""

    CODE = 0
    DATA = 1  # other data trains something else, whatever the code and the seed
    DEVICE = 2
    DISTRIBUTED = 3
    VERSIONS = 4
    DETERMINISM = 5
    THREADS = 6
    SEED = 7
    SPEC = 8
    # Data the job's code draws (FakeData, tensors made in memory) follows from the code and the spec:
    # a change above is its likely cause, so it is named after them.
    DRAWN_DATA = 9
    # String hashing changes the numbers only where a job orders strings by their hash (a set of
    # names, say): rarer than any spec field changing them, so never ranked above one.
    HASHING = 10
    REPOSITORY = 11
    OTHER = 12


class Source(Enum):
    """Who collects a fact."""

    COLLECTOR = "a collector of its own in mlrepro.capture.environment"
    PACKAGE = "the installed distribution's version"  # key <distribution>.version
    SWITCH = "mlrepro.capture.seeding's determinism state"  # key determinism.<field>
    VARIABLE = "an environment variable on the allow-list"  # key env.<NAME>
    CODE = "the code record (mlrepro.capture.code)"
    RUN = "start_run: the device the run resolved"
    DISTRIBUTED = "the process group under torchrun (mlrepro.training.distributed)"
    DATASET = "the run's datasets (run.log_dataset, in MLflow's dataset tracking)"  # data.<name>, drawn_data.<name>


@dataclass(frozen=True)
class Fact:
    """One fact, or a family of facts: a key ending in ``.`` or ``_`` covers every key it starts."""

    key: str
    source: Source
    category: Category
    explanation: str
    drift: bool = False  # compared by `reproduce` before the job starts: code, versions, hardware

    @property
    def family(self) -> bool:
        return self.key.endswith((".", "_"))

    def covers(self, key: str) -> bool:
        return key.startswith(self.key) if self.family else key == self.key


_TF32 = "TF32 rounds float32 matmul and convolution inputs to 10 mantissa bits on Ampere and newer GPUs"
THREADS_EXPLAINED = "CPU kernels split reductions across threads, so another thread count sums in another order"
_KERNELS = "another release may change kernels and the order in which they reduce"
WORLD_EXPLAINED = ("another number of processes: each rank trains on another shard of every batch, and DDP averages "
          "gradients over another number of ranks")
BUCKETS_EXPLAINED = ("DDP all-reduces gradients bucket by bucket: another bucket size groups them, and sums them, "
            "in another order (pytorch issue 30509)")
_HASHING = ("string hashing orders sets of strings, and what is built from them; it changes the numbers only where "
            "the job iterates such a set")
_RECORDED = "recorded for completeness; rarely changes the numbers"

C, K = Category, Source
FACTS: tuple[Fact, ...] = (
    Fact("code.entry", K.CODE, C.CODE, "another module or script ran the job: the same spec, other code", drift=True),
    Fact("code.source_digest", K.CODE, C.CODE, "the job's own source files differ", drift=True),
    Fact("data.", K.DATASET, C.DATA, "the dataset's content differs (its digest): other data trains something else"),
    Fact("drawn_data.", K.DATASET, C.DRAWN_DATA,
         "the data the job's code draws differs (its digest): it follows from the code and the spec, so a change "
         "named above is its likely cause; alone, the code drew it otherwise"),
    Fact("run.device", K.RUN, C.DEVICE, "CPU and GPU kernels compute in different orders"),
    Fact("gpu.name", K.COLLECTOR, C.DEVICE, "another GPU model runs other kernels, and cuDNN chooses by model", drift=True),
    Fact("gpu.capability", K.COLLECTOR, C.DEVICE, "another GPU architecture runs other kernels", drift=True),
    Fact("env.CUDA_VISIBLE_DEVICES", K.VARIABLE, C.DEVICE, "the run may have used another GPU"),
    Fact("cpu.model", K.COLLECTOR, C.DEVICE,
         "another CPU may run other vector kernels (AVX2, AVX-512) that round differently", drift=True),
    Fact("distributed.world_size", K.DISTRIBUTED, C.DISTRIBUTED, WORLD_EXPLAINED),
    Fact("distributed.backend", K.DISTRIBUTED, C.DISTRIBUTED,
         "NCCL and gloo all-reduce gradients with other algorithms, which sum in other orders"),
    Fact("distributed.bucket_cap_mb", K.DISTRIBUTED, C.DISTRIBUTED, BUCKETS_EXPLAINED),
    Fact("distributed.devices", K.DISTRIBUTED, C.DISTRIBUTED, "the ranks trained on other devices, or there were other ranks"),
    Fact("env.NCCL_", K.DISTRIBUTED, C.DISTRIBUTED,
         "NCCL's algorithm and protocol (NCCL_ALGO, NCCL_PROTO, ...) decide the order in which it sums"),
    Fact("env.TORCH_NCCL_", K.DISTRIBUTED, C.DISTRIBUTED, "changes how NCCL collectives run"),
    Fact("env.GLOO_", K.DISTRIBUTED, C.DISTRIBUTED, "changes how gloo connects and reduces"),
    Fact("env.TORCH_DISTRIBUTED_DEBUG", K.DISTRIBUTED, C.OTHER, _RECORDED),
    Fact("torch.version", K.PACKAGE, C.VERSIONS, f"torch: {_KERNELS}", drift=True),
    Fact("cuda.version", K.COLLECTOR, C.VERSIONS, f"CUDA: {_KERNELS}", drift=True),
    Fact("cudnn.version", K.COLLECTOR, C.VERSIONS, f"cuDNN: {_KERNELS}", drift=True),
    Fact("gpu.driver", K.COLLECTOR, C.VERSIONS, "the GPU driver compiles and schedules kernels", drift=True),
    Fact("torchvision.version", K.PACKAGE, C.VERSIONS,
         "torchvision: data transforms and models may compute differently", drift=True),
    Fact("numpy.version", K.PACKAGE, C.VERSIONS, "NumPy: random streams and data preparation may change", drift=True),
    Fact("determinism.cudnn_benchmark", K.SWITCH, C.DETERMINISM,
         "cudnn.benchmark picks kernels by timing them on first use, so the choice (and the bits) can change from run to run"),
    Fact("determinism.cudnn_deterministic", K.SWITCH, C.DETERMINISM,
         "with cudnn.deterministic off, cuDNN may use algorithms that accumulate with atomics in a varying order"),
    Fact("determinism.deterministic_algorithms", K.SWITCH, C.DETERMINISM,
         "without torch.use_deterministic_algorithms(True), ops such as index_add and scatter_add on CUDA add in a "
         "varying order"),
    Fact("determinism.deterministic_warn_only", K.SWITCH, C.DETERMINISM,
         "warn-only mode lets nondeterministic ops run with a warning instead of stopping them"),
    Fact("determinism.cudnn_allow_tf32", K.SWITCH, C.DETERMINISM, _TF32),
    Fact("determinism.cuda_matmul_allow_tf32", K.SWITCH, C.DETERMINISM, _TF32),
    Fact("determinism.float32_matmul_precision", K.SWITCH, C.DETERMINISM, _TF32),
    Fact("env.NVIDIA_TF32_OVERRIDE", K.VARIABLE, C.DETERMINISM, _TF32),
    Fact("env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", K.VARIABLE, C.DETERMINISM, _TF32),
    Fact("env.CUBLAS_WORKSPACE_CONFIG", K.VARIABLE, C.DETERMINISM,
         "without a fixed cuBLAS workspace (:4096:8 or :16:8) cuBLAS may split reductions differently"),
    Fact("env.OPENBLAS_CORETYPE", K.VARIABLE, C.DETERMINISM, "selects OpenBLAS's kernel family, which rounds differently"),
    Fact("env.MKL_CBWR", K.VARIABLE, C.DETERMINISM, "MKL's conditional bitwise reproducibility mode selects its kernel path"),
    Fact("env.KMP_DETERMINISTIC_REDUCTION", K.VARIABLE, C.DETERMINISM, "OpenMP reductions in a fixed or a free order"),
    Fact("determinism.intra_op_threads", K.SWITCH, C.THREADS, THREADS_EXPLAINED),
    Fact("env.OMP_NUM_THREADS", K.VARIABLE, C.THREADS, THREADS_EXPLAINED),
    Fact("env.MKL_NUM_THREADS", K.VARIABLE, C.THREADS, THREADS_EXPLAINED),
    Fact("env.OPENBLAS_NUM_THREADS", K.VARIABLE, C.THREADS, THREADS_EXPLAINED),
    Fact("determinism.interop_threads", K.SWITCH, C.THREADS,
         "inter-op threads run independent ops side by side; this rarely changes bits"),
    Fact("env.PYTHONHASHSEED", K.VARIABLE, C.HASHING, _HASHING),
    Fact("determinism.hash_randomization", K.SWITCH, C.HASHING, _HASHING),
    Fact("env.CUDA_LAUNCH_BLOCKING", K.VARIABLE, C.OTHER, _RECORDED),
    Fact("git.untracked", K.CODE, C.OTHER, "untracked files did not run; the job's sources are code.source_digest"),
    Fact("git.commit", K.CODE, C.REPOSITORY,
         "the repository changed; the files the job ran are compared by code.source_digest", drift=True),
    Fact("git.dirty", K.CODE, C.REPOSITORY,
         "the repository changed; the files the job ran are compared by code.source_digest", drift=True),
    Fact("git.diff_digest", K.CODE, C.REPOSITORY,
         "the repository changed; the files the job ran are compared by code.source_digest", drift=True),
    Fact("python.version", K.COLLECTOR, C.OTHER, _RECORDED, drift=True),
    Fact("os.platform", K.COLLECTOR, C.OTHER, _RECORDED, drift=True),
    Fact("cpu.count", K.COLLECTOR, C.OTHER, _RECORDED, drift=True),
    Fact("cuda.available", K.COLLECTOR, C.OTHER, _RECORDED, drift=True),
    Fact("mlflow.version", K.PACKAGE, C.OTHER, _RECORDED, drift=True),
    Fact("pydantic.version", K.PACKAGE, C.OTHER, _RECORDED, drift=True),
    Fact("mlrepro.version", K.PACKAGE, C.OTHER, _RECORDED, drift=True),
)
del C, K

# A fact this version does not know: one an older or newer mlrepro recorded, read back from its run.
UNDECLARED = Fact("", Source.COLLECTOR, Category.OTHER, _RECORDED)

_BY_KEY = {fact.key: fact for fact in FACTS if not fact.family}
_FAMILIES = sorted((fact for fact in FACTS if fact.family), key=lambda fact: len(fact.key), reverse=True)


def declared(key: str) -> Fact | None:
    """The declaration of a fact; a rank's own copy (``env.NCCL_ALGO.rank1``) is its variable's."""
    base = key.rsplit(".rank", 1)[0] if ".rank" in key else key
    return _BY_KEY.get(base) or next((fact for fact in _FAMILIES if fact.covers(base)), None)


def fact_of(key: str) -> Fact:
    """The declaration of a fact, or ``UNDECLARED`` for one another version of mlrepro recorded."""
    return declared(key) or UNDECLARED


def keys_from(source: Source) -> list[str]:
    """The single keys (not families) that ``source`` collects."""
    return [fact.key for fact in FACTS if fact.source is source and not fact.family]
