"""CIFAR-10 through torchvision's own loader, or FakeData of the same shape drawn from the seed."""

from __future__ import annotations

from pathlib import Path

import torchvision
import torchvision.transforms as transforms
from torch.utils.data import Dataset, Subset

from mlrepro.errors import DatasetError, first_line
from projects.cifar10.spec import Cifar10Spec

TRAIN_SIZE, TEST_SIZE = 50_000, 10_000
# FakeData seeds image i with random_offset + i; spacing the offsets by more than
# both sets keeps every seed's images, train and test, apart from every other's.
_FAKE_OFFSET_STRIDE = TRAIN_SIZE + TEST_SIZE

# The seed's normalisation: ToTensor, then every channel to [-1, 1].
TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def load_datasets(spec: Cifar10Spec) -> tuple[Dataset, Dataset]:
    """The training and test sets the spec asks for, each cut to its limit."""
    if spec.dataset == "fake":
        train, test = _fake(spec.seed)
    else:
        train, test = _cifar10(Path(spec.data_dir))
    return _first(train, spec.train_limit), _first(test, spec.test_limit)


def _fake(seed: int) -> tuple[Dataset, Dataset]:
    offset = seed * _FAKE_OFFSET_STRIDE

    def fake(size: int, start: int) -> Dataset:
        return torchvision.datasets.FakeData(
            size=size, image_size=(3, 32, 32), num_classes=10, transform=TRANSFORM, random_offset=start
        )

    return fake(TRAIN_SIZE, offset), fake(TEST_SIZE, offset + TRAIN_SIZE)


def _cifar10(root: Path) -> tuple[Dataset, Dataset]:
    """From ``root/cifar-10-batches-py`` when it is there, else downloaded (checked against CIFAR-10's MD5 sums)."""
    try:
        return _open_cifar10(root, download=False)
    except RuntimeError:
        pass  # not there (or not intact): try to fetch it
    try:
        return _open_cifar10(root, download=True)
    except Exception as err:  # URLError, socket errors, a bad archive: all mean "no data"
        raise DatasetError(
            f"CIFAR-10 is not in {root / 'cifar-10-batches-py'} (or not intact) and could not be downloaded ({first_line(err)}); "
            f"put the extracted cifar-10-batches-py folder under data_dir={root}, or use -P dataset=fake"
        ) from err


def _open_cifar10(root: Path, download: bool) -> tuple[Dataset, Dataset]:
    train = torchvision.datasets.CIFAR10(root=str(root), train=True, download=download, transform=TRANSFORM)
    test = torchvision.datasets.CIFAR10(root=str(root), train=False, download=download, transform=TRANSFORM)
    return train, test


def _first(dataset: Dataset, limit: int) -> Dataset:
    size = len(dataset)  # type: ignore[arg-type]
    return dataset if limit == 0 or limit >= size else Subset(dataset, range(limit))
