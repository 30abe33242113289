"""``python -m projects.cifar10 [--spec FILE] [field=value ...]``

The training code (and torch) is imported once the spec is valid: ``--help`` and a typo answer at once.
"""

from mlrepro.cli.job import job_command
from projects.cifar10.spec import Cifar10Spec

job_command(Cifar10Spec, "projects.cifar10.train:train")(prog_name="python -m projects.cifar10")
