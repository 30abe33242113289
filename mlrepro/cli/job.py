"""A job's command line: ``python train.py [--spec FILE] [field=value ...]`` validated as its spec,
then the tracked, seeded run handed to its training function."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mlrepro.capture.spec import (
    BaseSpec,
    DistributedSpec,
    build_spec,
    parse_spec,
)
from mlrepro.cli.exits import EXIT_OK, user_errors
from mlrepro.cli.words import spec_values
from mlrepro.errors import MlreproError, one_line, redacted

if TYPE_CHECKING:
    from mlrepro.training.runs import TrackedRun

TrainFunction = Callable[[Any, "TrackedRun"], None]


def run_job(spec: BaseSpec, train: TrainFunction) -> None:
    """Open the tracked, seeded run for ``spec`` and hand it to the job's training function."""
    # the training layer imports torch: only once a job runs, after its spec is valid
    from mlrepro.capture.code import mark_job_command_line
    from mlrepro.training import distributed
    from mlrepro.training.signals import RunInterrupted
    from mlrepro.training.tracking import checked_before_opening, start_run

    nproc = spec.nproc if isinstance(spec, DistributedSpec) else 1
    if nproc > 1 and not distributed.launched_by_torchrun():
        # What would fail on every rank is said here, once, before torchrun starts them: the checks
        # start_run makes before a run exists.
        checked_before_opening(spec)
        distributed.relaunch_under_torchrun(nproc)  # the same command, once a rank, under torchrun
    mark_job_command_line()
    try:
        with start_run(spec) as run:
            train(spec, run)
    except RunInterrupted as interrupted:
        pending = interrupted.pending
        kept = "every step is recorded, and the run is KILLED" if pending is None or pending.nothing \
            else f"the run is KILLED; {pending.describe_for_user()}"
        click.echo(f"mlrepro: run {interrupted.run_id} stopped by {interrupted.signal_name} after "
                   f"{interrupted.steps} steps; {one_line(redacted(kept))}", err=True)
        sys.exit(interrupted.exit_code)


_JOB_SETTINGS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["-h", "--help"]}


def job_command(spec_type: type[BaseSpec], train: TrainFunction) -> click.Command:
    """The command line of one job: ``[--spec FILE] [field=value ...]``."""
    job = spec_type.job_name()
    fields = ", ".join(name for name in spec_type.model_fields if name != "job")

    @click.command(name=job, context_settings=_JOB_SETTINGS,
                   help=f"Run the {job} job, seeded and tracked in MLflow. Fields: {fields}.")
    @click.option("--spec", "spec_file", metavar="FILE", help="YAML or JSON spec; field=value words override it.")
    @click.argument("assignments", nargs=-1, type=click.UNPROCESSED, metavar="[FIELD=VALUE]...")
    def command(spec_file: str | None, assignments: tuple[str, ...]) -> None:
        # MLflow only when a job fails before it runs
        from mlrepro.store.record import write_launcher_error

        with user_errors(on_error=write_launcher_error):
            spec = build_spec(spec_type, spec_values(spec_file, assignments))
            run_job(spec, train)

    return command


def job_main(spec_type: type[BaseSpec], train: TrainFunction, args: Sequence[str] | None = None) -> NoReturn:
    """Run your own job from the command line: ``python train.py [--spec FILE] [field=value ...]``.

    Validates the words as a ``spec_type``, opens the tracked, seeded run, calls
    ``train(spec, run)``, and exits 0, or 2 with one line for bad input. ``mlflow run``
    and ``mlrepro reproduce`` start the job this way.
    """
    job_command(spec_type, train).main(args=list(args) if args is not None else None)
    sys.exit(EXIT_OK)  # click exits itself; this is for the type checker


def spec_file_command(trainers: dict[str, Callable[[], TrainFunction]]) -> click.Command:
    """``python -m projects --spec FILE``: the file's ``job`` field picks the job."""

    @click.command(name="projects", context_settings=_JOB_SETTINGS, help="Run the job a spec file names in its `job` field.")
    @click.option("--spec", "spec_file", metavar="FILE", required=True, help="YAML or JSON spec with a job field.")
    @click.argument("assignments", nargs=-1, type=click.UNPROCESSED, metavar="[FIELD=VALUE]...")
    # MLflow only when a job fails before it runs
    def command(spec_file: str, assignments: tuple[str, ...]) -> None:
        # MLflow only when a job fails before it runs
        from mlrepro.store.record import write_launcher_error

        with user_errors(on_error=write_launcher_error):
            spec = parse_spec(spec_values(spec_file, assignments))
            if spec.job not in trainers:
                raise MlreproError(f"job: {spec.job!r} is not one of this project's jobs ({', '.join(sorted(trainers))})")
            run_job(spec, trainers[spec.job]())

    return command
