"""Write a small MNIST in its real format (the IDX files torchvision's ``datasets.MNIST`` reads), for a
machine that cannot download the real one, and for the tests:

    python fake_data.py ../data --train 512 --test 256

Images are 28x28 bytes drawn from a fixed seed, each label's digit drawn as a bright block in its own
place, so that the CNN has something to learn. ``datasets.MNIST(root, download=True)`` finds them
and downloads nothing.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 64, size=(len(labels), 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        row, column = divmod(int(label), 4)
        images[index, 2 + row * 8: 8 + row * 8, 2 + column * 6: 7 + column * 6] = 255
    return images


def write_mnist(root: str | Path, train: int = 512, test: int = 256, seed: int = 0) -> Path:
    """The four IDX files under ``root/MNIST/raw``; the folder."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        images = _images(labels, rng)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + labels.tobytes())
    return raw


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder MNIST's data goes in (main.py's --data)")
    parser.add_argument("--train", type=int, default=512, help="training images")
    parser.add_argument("--test", type=int, default=256, help="test images")
    arguments = parser.parse_args()
    print(write_mnist(arguments.root, arguments.train, arguments.test))
