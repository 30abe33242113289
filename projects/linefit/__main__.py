"""``python -m projects.linefit [--spec FILE] [field=value ...]``"""

from mlrepro.cli import job_command
from mlrepro.spec import LineFitSpec
from projects.linefit.train import train

job_command(LineFitSpec, train)(prog_name="python -m projects.linefit")
