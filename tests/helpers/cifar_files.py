"""A small CIFAR-10 in the official Python pickle format, for torchvision's real loader.

Same files, keys, dtypes and layout as ``cifar-10-python.tar.gz`` extracts to:
five ``data_batch_N`` files and a ``test_batch``, each a pickled dict whose
``data`` is an N x 3072 uint8 array (1024 red, 1024 green, 1024 blue values, row
by row) and whose ``labels`` are ints 0-9, plus ``batches.meta`` with the class
names. The pixels are random, so the MD5 sums are not CIFAR-10's.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(rng: np.random.Generator, label: str, count: int) -> dict:
    return {
        "batch_label": label,
        "labels": rng.integers(0, 10, size=count).tolist(),
        "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        "filenames": [f"image_{i:05d}.png" for i in range(count)],
    }


def write_cifar10(root: Path, images_per_batch: int = 60, test_images: int = 100, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` and return it."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{n}": _batch(rng, f"training batch {n} of 5", images_per_batch) for n in range(1, 6)}
    batches["test_batch"] = _batch(rng, "testing batch 1 of 1", test_images)
    batches["batches.meta"] = {"num_cases_per_batch": images_per_batch, "label_names": CLASSES, "num_vis": 3072}
    for name, content in batches.items():
        with open(folder / name, "wb") as file:
            pickle.dump(content, file, protocol=2)
    return folder
