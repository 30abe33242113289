"""The examples are real training code: the PyTorch project's MNIST example, on MNIST files written in
their real format and read by torchvision's own loader, through its transforms, its scheduler and its
DataLoader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from examples.mnist.fake_data import write_mnist
from tests.conftest import REPO, jobs_two_at_once, run_command
from tests.helpers.planting import planted_copy, planted_line

MNIST = REPO / "examples" / "mnist" / "main.py"

def planted_mnist(folder: Path) -> Path:
    """The example with noise added to fc1's output from step PLANT_NOISE_FROM on; the loop says the step."""
    return planted_copy(MNIST, folder, "import mlrepro  # mlrepro\n", [
        ("        x = self.fc1(x)\n", "        x = self.fc1(x)\n        x = planted(self.step if self.training else -1, x)\n"),
        ("        output = model(data)\n", "        model.step = run.first_step + run.steps_logged\n        output = model(data)\n")])


def mnist_runs(store: str, cwd: Path, script: Path, *words: str, runs: int = 2, **env: str) -> list[str]:
    """``runs`` runs of the example, two at once, each in its own process; their ids."""
    command = [sys.executable, str(script), "--epochs", "4", "--log-interval", "100", *words]
    return jobs_two_at_once(store, cwd, [command] * runs, **env)


@pytest.mark.e2e
def test_bisect_on_the_mnist_example_names_the_step_and_line_of_a_planted_op(tmp_path: Path, store: str) -> None:
    write_mnist(tmp_path / "data", train=256, test=64)  # four batches an epoch, sixteen steps
    work = tmp_path / "work"
    script = planted_mnist(work)
    noisy = {"PLANT_NOISE_FROM": "12"}
    a, b = mnist_runs(store, work, script, "checkpoint_every=10", **noisy)

    result = run_command([sys.executable, "-m", "mlrepro", "bisect", "--json", a, b], store, work, **noisy)
    assert result.returncode == 1, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert (found["first_divergent_step"], found["checkpoint_step"]) == (12, 10)
    difference = found["difference"]
    assert difference["step"] == 12 and difference["phase"] == "op" and difference["where"].endswith("torch.randn")
    assert difference["location"] == f"{script}:{planted_line(script)} in planted"

    # Replays without the noise agree, having traced the model itself (not torchvision's Normalize).
    calm = run_command([sys.executable, "-m", "mlrepro", "bisect", a, b], store, work)
    assert calm.returncode == 0, calm.stderr[-3000:]
    assert "did not recur" in calm.stdout


def test_the_fake_mnist_is_read_by_torchvisions_own_loader(tmp_path: Path) -> None:
    from torchvision import datasets, transforms

    write_mnist(tmp_path, train=12, test=5)
    train = datasets.MNIST(str(tmp_path), train=True, download=True, transform=transforms.ToTensor())
    test = datasets.MNIST(str(tmp_path), train=False)
    image, label = train[3]
    assert (len(train), len(test), tuple(image.shape)) == (12, 5, (1, 28, 28))
    assert 0 <= label < 10 and float(image.max()) == 1.0  # its digit's bright block


def test_the_example_marks_each_line_it_changed_and_changes_few() -> None:
    # Every line mlrepro added or changed says so; the rest is the PyTorch project's text.
    marked = [line for line in MNIST.read_text().splitlines() if "# mlrepro" in line]
    assert 10 <= len(marked) <= 20, len(marked)
    assert 'mlrepro.job_main(parser, run_job, job="mnist")' in MNIST.read_text()  # its argparse options kept
