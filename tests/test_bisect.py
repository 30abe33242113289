"""mlrepro bisect: two runs replayed from their last common checkpoint (or from the start, where none
is left), each in a fresh process, name the first module, op and line where they part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro.cli.main import main
from mlrepro.errors import BisectError
from mlrepro.replay.bisect import BisectResult, describe, first_difference, replay_start
from mlrepro.store.checkpoints import checkpoint_steps
from tests.conftest import (
    REPO,
    PlantedRuns,
    assert_one_line_error_here,
    run_command,
    run_here,
    run_planted,
)

PLANTED = REPO / "tests" / "jobs" / "planted.py"


def event(step: int, phase: str, where: str, value: int, location: str | None = None) -> dict:
    return {"step": step, "phase": phase, "where": where, "hash": value, "shape": [2], "location": location}


def test_the_first_event_whose_bits_differ_is_named_with_its_line() -> None:
    a = [event(3, "weights", "fc.weight", 1), event(3, "op", "fc: torch.nn.functional.linear", 2, "train.py:9 in f"),
         event(3, "forward", "fc", 3)]
    b = [*a[:1], event(3, "op", "fc: torch.nn.functional.linear", 7, "train.py:9 in f"), event(3, "forward", "fc", 8)]
    found = first_difference(a, b)
    assert (found.step, found.phase, found.module, found.location) == (3, "op", "fc", "train.py:9 in f")
    assert first_difference(a, list(a)) is None


def test_replays_that_ran_other_modules_or_stopped_early_are_said_to_part_in_their_path() -> None:
    a = [event(0, "forward", "fc", 1), event(0, "forward", "head", 2)]
    assert first_difference(a, [event(0, "forward", "fc", 1), event(0, "forward", "dropout", 2)]).phase == "path"
    assert first_difference(a, a[:1]).explanation.startswith("replay A went on where the other stopped")


@pytest.mark.e2e
def test_bisect_names_the_layer_whose_op_is_nondeterministic(tmp_path: Path, store: str) -> None:
    noisy = {"PLANT_NOISE_FROM": "15"}  # Noise adds unseeded noise from step 15 on, in these runs and the replays
    # Of the checkpoints at steps 10, 20, 30 and 40 each run keeps the newest only: none is left before
    # the runs part, and the replays run the job from its start.
    a, b = (run_planted(store, tmp_path, "checkpoint_every=10", "keep_checkpoints=1", **noisy) for _ in range(2))
    assert checkpoint_steps(mlflow.MlflowClient(), a) == checkpoint_steps(mlflow.MlflowClient(), b) == [40]
    result = run_command([sys.executable, "-m", "mlrepro", "bisect", "--json", a, b], store, tmp_path, **noisy)
    assert result.returncode == 1, result.stderr
    found = json.loads(result.stdout)
    assert (found["first_divergent_step"], found["from_start"], found["replayed_steps"]) == (15, True, 16)
    difference = found["difference"]
    assert (difference["step"], difference["phase"], difference["module"]) == (15, "op", "noise")
    assert difference["where"] == "noise: torch.randn"
    line = next(i for i, text in enumerate(PLANTED.read_text().splitlines(), 1) if "torch.randn(x.shape" in text)
    assert difference["location"] == f"{PLANTED}:{line} in forward"
    text = describe(BisectResult.model_validate_json(result.stdout))  # what bisect prints without --json
    assert "first difference: step 15, in module noise: op torch.randn" in text

    # Without the variable the op is deterministic again: the replays agree, and bisect says so.
    calm = run_here(main, "bisect", a, b)  # the command here; its replays in processes of their own
    assert calm.exit_code == 0, calm.stderr
    assert "did not recur" in calm.stdout
    assert "replaying run B (" in calm.stderr and "from the start to step 15" in calm.stderr
    assert "replayed runs" in calm.stdout and "from the start to step 15" in calm.stdout


def test_replays_start_at_the_last_checkpoint_in_common_else_at_the_start_of_runs_never_resumed() -> None:
    assert replay_start([5, 10, 20], 15, from_start=True, parting="") == 10
    assert replay_start([5, 10, 20], 15, from_start=False, parting="") == 10
    assert replay_start([20, 30], 15, from_start=True, parting="") is None  # kept only later, or parting before
    assert replay_start([], 15, from_start=True, parting="") is None  # never checkpointed
    with pytest.raises(BisectError, match="part at step 15, and have no checkpoint in common at or before step 15 "
                                          "to replay from, and a run that was resumed"):
        replay_start([20], 15, from_start=False, parting="runs a and b part at step 15")


def test_runs_that_do_not_part_are_refused_in_one_line(planted_store: PlantedRuns) -> None:
    assert_one_line_error_here(run_here(main, "bisect", planted_store.plain, planted_store.plain_again),
                               "do not part (identical)")
