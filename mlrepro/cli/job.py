"""A job's command line: ``python train.py [--spec FILE] [field=value ...]`` validated as its spec,
then the tracked, seeded run handed to its training function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mlrepro.capture import arguments
from mlrepro.capture.spec import (
    BaseSpec,
    DistributedSpec,
    build_spec,
    params_of,
    parse_assignments,
    parse_spec,
    read_spec_file,
)
from mlrepro.cli.exits import EXIT_OK, user_errors
from mlrepro.cli.words import spec_values
from mlrepro.errors import MlreproError, one_line, redacted
from mlrepro.store.zygote import prestart

if TYPE_CHECKING:
    from mlrepro.training.runs import TrackedRun

TrainFunction = Callable[[Any, "TrackedRun"], None]
# A training function, or where it is as "module:function": imported once the spec is valid, so
# that --help and bad input answer before torch is imported.
Trainer = TrainFunction | str


def _training_function(train: Trainer) -> TrainFunction:
    if callable(train):
        return train
    module, _, name = train.partition(":")
    return getattr(import_module(module), name)


def _fields_help(spec_type: type[BaseSpec]) -> str:
    """Each field with its default and meaning, one a line (click keeps lines after a \\b)."""
    fields = {name: field for name, field in spec_type.model_fields.items() if name != "job"}
    defaults = params_of({name: field.get_default(call_default_factory=True) for name, field in fields.items()
                          if not field.is_required()})
    rows = [(name, defaults.get(name, "(required)"), field.description or "") for name, field in fields.items()]
    width = max(len(name) + len(default) for name, default, _ in rows) + 3
    return "\b\nFields (default: meaning):\n" + "\n".join(
        f"  {name}={default}".ljust(width + 3) + meaning for name, default, meaning in rows)


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
        distributed.leave()  # the job is over on this rank; a user's own script may keep its group
        distributed.end_follower()  # only mlrepro's own command line ends a process
    except RunInterrupted as interrupted:
        pending = interrupted.pending
        status = interrupted.status
        kept = f"every step is recorded, and the run is {status}" if pending is None or pending.nothing \
            else f"the run is {status}; {pending.describe_for_user()}"
        when = "after" if status == "KILLED" else "once it had trained and saved all"
        click.echo(f"mlrepro: run {interrupted.run_id} stopped by {interrupted.signal_name} {when} "
                   f"{interrupted.steps} steps; {one_line(redacted(kept))}", err=True)
        sys.exit(interrupted.exit_code)


_JOB_SETTINGS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["-h", "--help"]}


def job_command(spec_type: type[BaseSpec], train: Trainer) -> click.Command:
    """The command line of one job: ``[--spec FILE] [field=value ...]``."""
    job = spec_type.job_name()

    @click.command(name=job, context_settings=_JOB_SETTINGS,
                   help=f"Run the {job} job, seeded and tracked in MLflow.\n\n{_fields_help(spec_type)}")
    @click.option("--spec", "spec_file", metavar="FILE", help="YAML or JSON spec; field=value words override it.")
    @click.argument("assignments", nargs=-1, type=click.UNPROCESSED, metavar="[FIELD=VALUE]...")
    def command(spec_file: str | None, assignments: tuple[str, ...]) -> None:
        _start(lambda: (build_spec(spec_type, spec_values(spec_file, assignments)), train))

    return command


def _start(spec_and_training: Callable[[], tuple[BaseSpec, Trainer]]) -> None:
    """Validate the words into a spec (and its job's training function), then run the job; bad input is
    one line and exit 2, noted on a launcher's run where `mlflow run` made one."""
    # the training layer's name for it, without torch
    from mlrepro.training.orders import SPEC_ONLY_ENV

    with user_errors(on_error=_note_on_launchers_run):
        spec, train = spec_and_training()
        if os.environ.get(SPEC_ONLY_ENV):
            return  # a check asked only whether the words make a spec
        prestart()  # the writers' zygote imports MLflow while this process imports torch
        run_job(spec, _training_function(train))


def _note_on_launchers_run(message: str) -> None:
    """Say why on the run ``mlflow run`` opened, where it opened one (``MLFLOW_RUN_ID``)."""
    if os.environ.get("MLFLOW_RUN_ID"):
        # MLflow only when a launcher's run waits for the reason: a typo is answered without it
        from mlrepro.store.record import write_launcher_error

        write_launcher_error(message)


def job_main(spec_type: type[BaseSpec] | argparse.ArgumentParser, train: Trainer, args: Sequence[str] | None = None,
             *, job: str | None = None) -> NoReturn:
    """Run your own job from the command line: ``python train.py [--spec FILE] [field=value ...]``.

    Validates the words as a ``spec_type``, opens the tracked, seeded run, calls
    ``train(spec, run)``, and exits 0, or 2 with one line for bad input. ``train`` may be given as
    ``"module:function"``: it is then imported once the spec is valid, after ``--help``. ``mlflow run``
    and ``mlrepro reproduce`` start the job this way.

    Given the job's own ``argparse`` parser (or Hugging Face's ``HfArgumentParser``) instead of a spec
    class, and the ``job`` name its runs are filed under, the job keeps its command line: every option
    becomes a spec field, ``train`` gets the spec where it got the parsed namespace (the same
    attributes), and ``field=value`` words set the fields every job shares.
    """
    if isinstance(spec_type, argparse.ArgumentParser):
        _parser_main(spec_type, train, job, list(args) if args is not None else sys.argv[1:])
    job_command(spec_type, train).main(args=list(args) if args is not None else None)
    sys.exit(EXIT_OK)  # click exits itself; this is for the type checker


_SHARED_FIELDS_EPILOG = ("mlrepro: field=value words set the fields every job shares (seed=, deterministic=, device=, "
                         "threads=, checkpoint_every=, resume_from=, fingerprint_every=); --spec FILE reads a spec file.")


def _parser_main(parser: argparse.ArgumentParser, train: Trainer, job: str | None, words: list[str]) -> NoReturn:
    if not job:
        raise TypeError("job_main(parser, train, job='name'): name the job its runs are filed under")
    module = train.partition(":")[0] if isinstance(train, str) else train.__module__
    spec_type = arguments.spec_from_parser(parser, job, module=module)
    if parser.epilog is None:
        parser.epilog = _SHARED_FIELDS_EPILOG

    def spec_and_training() -> tuple[BaseSpec, Trainer]:
        options, rest = arguments.given_options(parser, words)  # argparse's own --help and errors
        spec_file, assignments = arguments.spec_words(rest)
        values = arguments.merged(read_spec_file(spec_file) if spec_file else {}, options,
                                  parse_assignments(assignments))
        return build_spec(spec_type, values), train

    _start(spec_and_training)
    sys.exit(EXIT_OK)


def spec_file_command(trainers: dict[str, Trainer]) -> click.Command:
    """``python -m projects --spec FILE``: the file's ``job`` field picks the job."""

    @click.command(name="projects", context_settings=_JOB_SETTINGS, help="Run the job a spec file names in its `job` field.")
    @click.option("--spec", "spec_file", metavar="FILE", required=True, help="YAML or JSON spec with a job field.")
    @click.argument("assignments", nargs=-1, type=click.UNPROCESSED, metavar="[FIELD=VALUE]...")
    def command(spec_file: str, assignments: tuple[str, ...]) -> None:
        def spec_and_training() -> tuple[BaseSpec, Trainer]:
            spec = parse_spec(spec_values(spec_file, assignments))
            if spec.job not in trainers:
                raise MlreproError(f"job: {spec.job!r} is not one of this project's jobs ({', '.join(sorted(trainers))})")
            return spec, trainers[spec.job]

        _start(spec_and_training)

    return command
