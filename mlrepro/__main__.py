"""``python -m mlrepro``: the same as the ``mlrepro`` command."""

from mlrepro.cli.main import main

main(prog_name="mlrepro")
