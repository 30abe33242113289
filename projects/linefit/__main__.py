"""``python -m projects.linefit [--spec FILE] [field=value ...]``"""

# Start MLflow's writer process first: its imports then overlap torch's.
from mlrepro.store.zygote import prestart

prestart()

from mlrepro.cli.job import job_command
from projects.linefit.spec import LineFitSpec
from projects.linefit.train import train

job_command(LineFitSpec, train)(prog_name="python -m projects.linefit")
