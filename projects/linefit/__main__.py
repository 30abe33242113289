"""``python -m projects.linefit [--spec FILE] [field=value ...]``

The training code (and torch) is imported once the spec is valid: ``--help`` and a typo answer at once.
"""

from mlrepro.cli.job import job_command
from projects.linefit.spec import LineFitSpec

job_command(LineFitSpec, "projects.linefit.train:train")(prog_name="python -m projects.linefit")
