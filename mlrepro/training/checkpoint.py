"""Checkpoints that carry everything a run needs to continue bit for bit, and load no code.

Weights and optimizer alone are not enough: the next step also draws from
Python's ``random``, NumPy, torch's CPU and CUDA generators and the DataLoader's
own generator, and starts at a position inside the epoch. All of it goes into
one file, written with ``torch.save`` and read with ``torch.load(weights_only=True)``,
which rebuilds tensors and plain containers only and refuses anything else; so
a tampered file cannot run code. Every state is kept as tensors, ints, floats
and lists for that reason.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlrepro.errors import CheckpointError
from mlrepro.store import checkpoints, keys

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mlrepro.capture.spec import BaseSpec

FORMAT = "mlrepro-checkpoint-1"


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every generator's state, as plain tensors and numbers. Reads only; changes nothing."""
    version, python_state, gauss_next = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        # Only read when CUDA is up: asking would otherwise start it.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {name: generator.get_state() for name, generator in (generators or {}).items()},
    }


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Put every generator back where ``capture_rng_state`` found it."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((
        numpy["bit_generator"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
        numpy["has_gauss"], numpy["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])


@dataclass(frozen=True)
class Checkpoint:
    """Where a run was and everything it needs to go on from there."""

    step: int  # steps done; the next step logged is this one
    epoch: int  # the epoch the next step belongs to
    batch_in_epoch: int  # batches of that epoch already done
    model: dict[str, Any]
    optimizer: dict[str, Any] | None
    rng: dict[str, Any]
    extra: dict[str, Any]
    # The learning-rate scheduler's state_dict (StepLR, OneCycleLR, ...): where the rate is in its
    # schedule decides every later update. Checkpoints written before it had the slot read as None.
    scheduler: dict[str, Any] | None = None


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + keys.CHECKSUM_SUFFIX)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint and, beside it, its SHA-256: torch's zip format does not
    notice changed bytes inside a tensor, so the checksum is what catches tampering."""
    path = Path(path)
    torch.save({"format": FORMAT, **checkpoint.__dict__}, path)
    checksum_path(path).write_text(_sha256(path) + "\n")
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; a damaged, truncated, changed or foreign file is a ``CheckpointError``, never code run."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        expected = checksum_path(path).read_text().strip()
    except OSError as err:
        raise CheckpointError(f"checkpoint {path.name} has no checksum file beside it; it was not loaded") from err
    if _sha256(path) != expected:
        raise CheckpointError(f"checkpoint {path.name} does not match its checksum (changed or truncated); it was not loaded")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path.name} is damaged or not a checkpoint mlrepro wrote; it was not loaded"
        ) from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path.name} is not in mlrepro's format {FORMAT}; it was not loaded")
    fields = Checkpoint.__dataclass_fields__
    missing = [name for name, field in fields.items() if name not in content and field.default is MISSING]
    if missing:
        raise CheckpointError(f"checkpoint {path.name} lacks {missing[0]!r}; it was not loaded")
    return Checkpoint(**{name: content[name] for name in fields if name in content})


def newest_checkpoint(client: MlflowClient, spec: BaseSpec) -> tuple[str, Checkpoint]:
    """The run ``spec.resume_from`` names (its full id) and its newest checkpoint, loaded and
    checked: the same spec, a checksum that matches, a file that holds only tensors and numbers."""
    with tempfile.TemporaryDirectory() as folder:
        run_id, path = checkpoints.download_newest_checkpoint(client, spec, Path(folder))
        return run_id, load_checkpoint(path)
