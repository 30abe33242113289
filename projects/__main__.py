"""``python -m projects --spec FILE``: run whichever job the spec file names."""

from mlrepro.cli.job import spec_file_command
from projects import TRAINERS

spec_file_command(TRAINERS)(prog_name="python -m projects")
