"""``python -m projects.cifar10 [--spec FILE] [field=value ...]``"""

# Start MLflow's writer process first: its imports then overlap torch's.
from mlrepro.store.zygote import prestart

prestart()

from mlrepro.cli.job import job_command
from projects.cifar10.spec import Cifar10Spec
from projects.cifar10.train import train

job_command(Cifar10Spec, train)(prog_name="python -m projects.cifar10")
