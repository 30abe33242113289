"""The example jobs, one folder each; MLproject runs them as ``python -m projects.<job>``."""

# Each job's training function, imported only when it is the one being run.
TRAINERS = {
    "linefit": "projects.linefit.train:train",
    "cifar10": "projects.cifar10.train:train",
}
