"""``mlrepro``: the command group. Each command lives with its kind (read, replay, recovery),
and each imports what it needs when it runs: ``mlrepro --help`` loads neither MLflow nor torch."""

from __future__ import annotations

import click

from mlrepro.cli import read, recovery, replay


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlrepro", prog_name="mlrepro", message="%(prog)s %(version)s")
def main() -> None:
    """mlrepro: bit-for-bit repeatable PyTorch runs, tracked in MLflow."""


for command in (read.compare, replay.reproduce, replay.bisect, replay.check, read.show, recovery.mark_killed,
                recovery.sync, read.find):
    main.add_command(command)
