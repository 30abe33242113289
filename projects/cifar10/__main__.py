"""``python -m projects.cifar10 [--spec FILE] [field=value ...]``"""

from mlrepro.cli import job_command
from mlrepro.spec import Cifar10Spec
from projects.cifar10.train import train

job_command(Cifar10Spec, train)(prog_name="python -m projects.cifar10")
