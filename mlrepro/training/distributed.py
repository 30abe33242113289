"""Training on many processes started by ``torchrun``: who owns the run, and every rank's losses in one record.

torchrun starts one process per rank and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Rank 0 owns
the MLflow run: it creates it (or, under ``mlflow run``, resumes it) and tells the other
ranks its id; they never create runs. Every rank records its own loss each step; every
``GATHER_EVERY`` steps and at each flush the ranks gather them on rank 0, over a gloo group
of their own (CPU tensors, whatever backend trains), and rank 0 logs their mean as the loss
metric and keeps every rank's values for the exact record.

The mean is taken on rank 0 in rank order, in float64: the same bits every time, where an
all-reduce would sum in whatever order its algorithm picks.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

GATHER_EVERY = 100
# Variables that choose how NCCL and gloo move and reduce data: another algorithm or protocol
# sums gradients in another order. Recorded (never secrets); any NCCL_* or GLOO_* is read.
VARIABLE_PREFIXES = ("NCCL_", "GLOO_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_DEBUG")


# Losses, run ids and facts travel on the CPU, whatever trains: a gloo group of mlrepro's own.
_gather_group: object = None


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one training run."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def owns_run(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def leave() -> None:
    """Leave the process group at the end of a job: a process that exits with its gloo group still
    up can abort in the group's destructor ("terminate called without an active exception"), seen
    on a rank of a two-process run that had finished and recorded everything."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_follower() -> None:
    """End a rank other than 0 of mlrepro's own job command line, once it has left the group, without
    the interpreter's teardown. Such a rank holds no run and no spool: nothing of it is left to save.
    Even after ``leave`` a rank was seen to abort in gloo's teardown ("terminate called without an
    active exception", once in some thirty CI runs, its run whole); torchrun then held the other
    node's agent for 300 s at its exit barrier, and reported the job failed."""
    if launched_by_torchrun() and os.environ.get("RANK", "0") != "0":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def relaunch_under_torchrun(nproc: int) -> NoReturn:
    """Become ``torchrun --standalone --nproc_per_node=nproc`` running this very command: the same
    module or script and words, one process a rank on this machine. The process is replaced
    (``exec``), so a signal to it reaches torchrun, which passes it on to every rank."""
    words = sys.orig_argv[1:]
    # The interpreter's own options (-u, -X ...) stay out: torchrun takes `-m module` or a script.
    start = words.index("-m") if "-m" in words else next(i for i, word in enumerate(words) if not word.startswith("-"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *words[start:]]
    if sys.flags.safe_path:  # -P (a replay): torchrun starts each rank without it, so say it to them all
        os.environ["PYTHONSAFEPATH"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def join(device: torch.device) -> World | None:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU); None when this
    process was not started by torchrun. On CUDA each rank trains on its local device."""
    if not launched_by_torchrun():
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda" and device.index is None:
        # NCCL works on the current device: without this every rank of a node would pick GPU 0.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                  backend=dist.get_backend())
    global _gather_group
    _gather_group = dist.new_group(backend="gloo") if world.backend != "gloo" else dist.group.WORLD
    return world



def rank_device(device: torch.device, world: World | None) -> torch.device:
    """The device this rank trains on: ``cuda`` becomes the rank's local GPU."""
    if world is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def share_from_rank_0(value: object) -> object:
    """Rank 0's ``value`` on every rank (the run id, a decision)."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_gather_group)
    return box[0]


def gather_on_rank_0(values: list[float]) -> list[list[float]] | None:
    """Every rank's ``values`` (the same count on each), on rank 0 in rank order; None elsewhere."""
    local = torch.tensor(values, dtype=torch.float64)
    if dist.get_rank() == 0:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.gather(local, gather_list=parts, dst=0, group=_gather_group)
        return [part.tolist() for part in parts]
    dist.gather(local, dst=0, group=_gather_group)
    return None


def gather_objects_on_rank_0(value: object) -> list[object] | None:
    """Every rank's ``value`` (any picklable object), on rank 0 in rank order; None elsewhere."""
    if dist.get_rank() == 0:
        everyone: list[object] = [None] * dist.get_world_size()
        dist.gather_object(value, everyone, dst=0, group=_gather_group)
        return everyone
    dist.gather_object(value, None, dst=0, group=_gather_group)
    return None


# In a checkpoint of a run of many processes: every rank's generator states and extras, in rank order.
RANKS_KEY = "mlrepro_ranks"


def rank_state(checkpoint_rng: dict, checkpoint_extra: dict) -> dict:
    """What one rank adds to a checkpoint: its generators and its own extras."""
    return {"rng": checkpoint_rng, "extra": checkpoint_extra}


def facts(world: World, device: torch.device, bucket_cap_mb: float | None) -> dict[str, str]:
    """What the process group was: world size, backend, DDP's bucket size, every rank's device,
    and the NCCL and gloo variables: rank 0's, and another rank's where it differs from them."""
    everyone: list[object] = [None] * world.size
    mine = {"device": str(device),
            "variables": {name: value for name, value in sorted(os.environ.items()) if name.startswith(VARIABLE_PREFIXES)}}
    dist.all_gather_object(everyone, mine, group=_gather_group)
    recorded = {
        "distributed.world_size": str(world.size),
        "distributed.backend": world.backend,
        "distributed.bucket_cap_mb": "unset" if bucket_cap_mb is None else f"{bucket_cap_mb:g}",
        "distributed.devices": ", ".join(str(rank["device"]) for rank in everyone),  # type: ignore[index]
    }
    first = everyone[0]["variables"]  # type: ignore[index]
    for rank, seen in enumerate(everyone):
        for name, value in seen["variables"].items():  # type: ignore[index]
            if rank == 0:
                recorded[f"env.{name}"] = value
            elif first.get(name) != value:  # a rank that differs from rank 0 is named
                recorded[f"env.{name}.rank{rank}"] = value
    return recorded
