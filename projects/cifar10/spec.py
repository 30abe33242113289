"""The CIFAR-10 job's spec: the seed's training settings and the data; DDP's settings come with
``DistributedSpec``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlrepro.capture.spec import CheckpointEvery, Count, DistributedSpec, LoaderWorkers


class Cifar10Spec(DistributedSpec):
    """The seed's second job: the PyTorch tutorial CNN on CIFAR-10, shuffled, with two loader workers."""

    job: Literal["cifar10"] = "cifar10"
    epochs: Count = Field(2, ge=1, le=10_000, description="passes over the training set")
    batch_size: Count = Field(4, ge=1, le=65_536, description="images per step")
    num_workers: LoaderWorkers = Field(2, ge=0, le=256, description="DataLoader worker processes")
    lr: float = Field(0.001, gt=0, allow_inf_nan=False, description="SGD learning rate")
    momentum: float = Field(0.9, ge=0, allow_inf_nan=False, description="SGD momentum")
    dataset: Literal["cifar10", "fake"] = Field("cifar10", description="cifar10, or fake: FakeData drawn from the seed")
    data_dir: str = Field("./data", min_length=1, description="where cifar-10-batches-py is, or is downloaded to")
    train_limit: Count = Field(0, ge=0, description="use only the first N training images; 0 = all")
    test_limit: Count = Field(0, ge=0, description="use only the first N test images for accuracy; 0 = all")
    checkpoint_every: CheckpointEvery = Field(2000, ge=0, description="log a checkpoint every N steps; 0 = never")
