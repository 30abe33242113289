"""A replay's trace counts steps as the run does, by its losses, and traces only what is trained:
never a transform that is a module (torchvision's Normalize), never a forked DataLoader worker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torchvision import transforms

from mlrepro.errors import BisectError
from mlrepro.replay.bisect import first_difference, refuse_unless_traced
from mlrepro.training.orders import Orders, StopRequested
from mlrepro.training.tracing import tracing


class Net(torch.nn.Module):
    def __init__(self, noise_from: int | None = None) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(12, 6), torch.nn.Linear(6, 1)
        self.noise_from, self.step = noise_from, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x))
        # The same op every step; from noise_from on, drawn from another seed, as an unseeded op would.
        planted = self.noise_from is not None and self.step >= self.noise_from
        generator = torch.Generator().manual_seed(1 + self.step if planted else 0)
        return self.fc2(hidden + 1e-3 * torch.rand(hidden.shape, generator=generator))


def trace(folder: Path, name: str, noise_from: int | None = None, watch: bool = False, steps: int = 6,
          until: int = 4) -> list[dict]:
    """The MNIST example's shape: a Normalize transform on every image of a batch, then the model;
    the loss logged after backward, as most loops do."""
    torch.manual_seed(0)
    model, normalize = Net(noise_from), transforms.Normalize((0.1307,), (0.3081,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: list[float] = []
    orders = Orders(trace=str(folder / f"{name}.json"), trace_until=until)
    with tracing(orders, 0, lambda: len(logged), (lambda: model) if watch else (lambda: None)):
        try:
            for step in range(steps):
                model.step = step
                images = torch.stack([normalize(torch.rand(1, 3, 4)) for _ in range(3)]).reshape(3, 12)
                loss = model(images).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                logged.append(loss.item())
        except StopRequested:  # the step after the last one traced began
            pass
    return json.loads((folder / f"{name}.json").read_text())["events"]


@pytest.mark.parametrize("watch", [False, True], ids=["the module with parameters", "the watched model"])
def test_steps_are_the_runs_steps_and_a_transform_is_not_one(tmp_path: Path, watch: bool) -> None:
    events = trace(tmp_path, "plain", watch=watch)
    assert sorted({event["step"] for event in events}) == [0, 1, 2, 3, 4]
    assert not [event for event in events if "Normalize" in event["where"] or "normalize" in event["where"]]
    weights = [(event["step"], event["where"]) for event in events if event["phase"] == "weights"]
    assert weights == [(step, name) for step in range(5) for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]


def test_a_difference_planted_at_a_step_is_found_at_that_step_and_its_line(tmp_path: Path) -> None:
    found = first_difference(trace(tmp_path, "a", noise_from=3), trace(tmp_path, "b", noise_from=None))
    assert found is not None and found.step == 3 and found.phase == "op"
    assert found.location is not None and "test_tracing.py" in found.location and "in forward" in found.location
    assert first_difference(trace(tmp_path, "c"), trace(tmp_path, "d")) is None


def test_a_forked_worker_inherits_the_hooks_and_traces_nothing(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 1)
    orders = Orders(trace=str(tmp_path / "trace.json"), trace_until=10)
    with tracing(orders, 0, lambda: 0):
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # as a DataLoader worker would: a module with parameters, in training mode
            try:
                model(torch.ones(2, 3))
                os.write(write, b"ran")
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 16) == b"ran"
        os.waitpid(child, 0)
    assert json.loads((tmp_path / "trace.json").read_text())["events"] == []  # and the parent traced nothing


def test_a_replay_that_never_reached_the_step_refuses_to_agree(tmp_path: Path) -> None:
    events = trace(tmp_path, "short", until=2)
    refuse_unless_traced(events, "A", 2)
    with pytest.raises(BisectError, match=r"traced no event of step 3, .*it traced steps 0\.\.2 only, of"):
        refuse_unless_traced(events, "A", 3)
    with pytest.raises(BisectError, match="it traced nothing"):
        refuse_unless_traced([], "B", 3)


class LightningShaped(torch.nn.Module):
    """As a LightningModule's training_step is: the watched module calls its child, never its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))


def test_a_watched_model_whose_children_run_alone_is_traced_under_its_own_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, logged = LightningShaped(), []
    orders = Orders(trace=str(tmp_path / "trace.json"), trace_until=1)
    with tracing(orders, 0, lambda: len(logged), lambda: module):
        try:
            for _ in range(3):
                loss = module.net(torch.ones(4, 3)).pow(2).mean()
                loss.backward()
                logged.append(loss.item())
        except StopRequested:
            pass
    events = json.loads((tmp_path / "trace.json").read_text())["events"]
    assert sorted({event["step"] for event in events}) == [0, 1]
    assert {event["where"] for event in events if event["phase"] == "forward"} == {"net", "net.0", "net.1"}
    assert [event["where"] for event in events if event["phase"] == "weights" and event["step"] == 0] == [
        "net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias"]


def test_an_op_in_the_steps_own_code_outside_any_module_is_traced_with_its_line(tmp_path: Path) -> None:
    module, logged = LightningShaped(), []
    orders = Orders(trace=str(tmp_path / "trace.json"), trace_until=0)
    with tracing(orders, 0, lambda: len(logged), lambda: module):
        try:
            for _ in range(2):
                output = module.net(torch.ones(4, 3))
                loss = (output + torch.full(output.shape, 0.5)).pow(2).mean()  # a training_step's own ops
                loss.backward()
                logged.append(loss.item())
                torch.ones(2)  # between steps, with no forward begun: not the step's
        except StopRequested:
            pass
    ops = [event for event in json.loads((tmp_path / "trace.json").read_text())["events"] if event["phase"] == "op"]
    outside = [event for event in ops if event["where"].startswith("LightningShaped: ")]
    assert [event["where"] for event in outside][:2] == ["LightningShaped: torch.full", "LightningShaped: Tensor.add"]
    assert "test_tracing.py" in outside[0]["location"]
    assert not [event for event in outside if "torch.ones" in event["where"]]
