"""``python -m projects.linefit [--spec FILE] [field=value ...]``"""

# Start MLflow's writer process first: its imports then overlap torch's.
from mlrepro.writer import prestart

prestart()

from mlrepro.cli import job_command
from mlrepro.spec import LineFitSpec
from projects.linefit.train import train

job_command(LineFitSpec, train)(prog_name="python -m projects.linefit")
