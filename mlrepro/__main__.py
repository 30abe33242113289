"""``python -m mlrepro``: the same as the ``mlrepro`` command."""

from mlrepro.cli import main

main(prog_name="mlrepro")
