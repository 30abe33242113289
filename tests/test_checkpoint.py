"""Checkpoints: every generator continues exactly after a reload in a new process; bad files load no code."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlrepro.errors import CheckpointError
from mlrepro.training.checkpoint import (
    Checkpoint,
    capture_rng_state,
    checksum_path,
    load_checkpoint,
    save_checkpoint,
)

DRAW = """
import json, random, sys
import numpy as np, torch
from mlrepro.training.checkpoint import Checkpoint, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint

def draws(generator):
    return [random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()),
            torch.rand(2).tolist(), torch.randperm(5, generator=generator).tolist()]

mode, path = sys.argv[1], sys.argv[2]
loader_generator = torch.Generator()
if mode == "save":
    from mlrepro import seed_everything
    seed_everything(7)
    loader_generator.manual_seed(7)
    draws(loader_generator)  # the run has been going for a while
    random.gauss(0, 1); np.random.randn()  # leave a cached Gaussian in both
    state = capture_rng_state({"loader": loader_generator})
    save_checkpoint(path, Checkpoint(step=3, epoch=0, batch_in_epoch=3, model={}, optimizer=None, rng=state, extra={}))
else:
    restore_rng_state(load_checkpoint(path).rng, {"loader": loader_generator})
print(json.dumps(draws(loader_generator)))
"""


def run(mode: str, path: Path) -> list:
    result = subprocess.run([sys.executable, "-c", DRAW, mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.e2e
def test_every_generator_continues_exactly_after_a_reload_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "step-3.pt"
    assert run("save", path) == run("load", path)


def small_checkpoint(path: Path) -> Path:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    checkpoint = Checkpoint(step=10, epoch=1, batch_in_epoch=2, model=model.state_dict(),
                            optimizer=optimizer.state_dict(), rng=capture_rng_state(), extra={"running_loss": 1.5})
    return save_checkpoint(path, checkpoint)


def test_model_optimizer_and_position_round_trip(tmp_path: Path) -> None:
    loaded = load_checkpoint(small_checkpoint(tmp_path / "c.pt"))
    assert (loaded.step, loaded.epoch, loaded.batch_in_epoch, loaded.extra) == (10, 1, 2, {"running_loss": 1.5})
    restored = torch.nn.Linear(3, 2)
    restored.load_state_dict(loaded.model)
    assert loaded.optimizer is not None and "momentum_buffer" in str(loaded.optimizer["state"])


def test_the_learning_rate_schedule_continues_where_it_was(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    path = save_checkpoint(tmp_path / "s.pt", Checkpoint(step=5, epoch=0, batch_in_epoch=5, model=model.state_dict(),
                                                          optimizer=optimizer.state_dict(), rng=capture_rng_state(),
                                                          extra={}, scheduler=scheduler.state_dict()))
    resumed_optimizer = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    resumed = torch.optim.lr_scheduler.StepLR(resumed_optimizer, step_size=2, gamma=0.5)
    loaded = load_checkpoint(path)
    resumed_optimizer.load_state_dict(loaded.optimizer)
    resumed.load_state_dict(loaded.scheduler)
    assert resumed.get_last_lr() == scheduler.get_last_lr() == [0.25]
    resumed_optimizer.step(), resumed.step(), optimizer.step(), scheduler.step()
    assert resumed.get_last_lr() == scheduler.get_last_lr() == [0.125]


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="c.pt does not match its checksum .changed or truncated.; it was not loaded"):
        load_checkpoint(path)


def test_a_tampered_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(path)


def test_a_damaged_file_with_a_matching_checksum_is_still_refused(tmp_path: Path) -> None:
    """Whoever rewrites the checksum too still cannot make torch.load run a broken file."""
    path = small_checkpoint(tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:100])
    checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(CheckpointError, match="c.pt is damaged or not a checkpoint mlrepro wrote; it was not loaded"):
        load_checkpoint(path)


def with_checksum(path: Path) -> None:
    """A file someone made to look like a checkpoint, checksum included."""
    checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest())


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    global MARKER
    MARKER = str(tmp_path / "code-ran")
    path = tmp_path / "evil.pt"
    torch.save({"format": "mlrepro-checkpoint-1", "model": RunsCode()}, path)
    with_checksum(path)
    with pytest.raises(CheckpointError, match="evil.pt is damaged or not a checkpoint mlrepro wrote"):
        load_checkpoint(path)
    assert not Path(MARKER).exists()
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(pickle.dumps(RunsCode()))
    with_checksum(plain_pickle)
    with pytest.raises(CheckpointError):
        load_checkpoint(plain_pickle)
    assert not Path(MARKER).exists()


def test_foreign_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with_checksum(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not in mlrepro's format"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare.pt has no checksum file beside it"):
        load_checkpoint(tmp_path / "bare.pt")
