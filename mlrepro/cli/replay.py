"""The commands that run jobs again: reproduce, bisect, check. Each imports its replay module when
it runs, so ``mlrepro --help`` and the read-only commands never load it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from mlrepro.cli.exits import (
    EXIT_DIFFERENT,
    EXIT_OK,
    exit_code,
    interrupted_in_one_line,
    user_errors,
)
from mlrepro.cli.words import as_assignments
from mlrepro.store import keys

if TYPE_CHECKING:
    from mlrepro.analysis.diagnosis import Difference

from mlrepro.cli.formatting import format_comparison, side_by_side


@click.command()
@click.argument("run_id")
@click.option("--project", metavar="DIR",
              help="The folder to start the job in; default: the project folder the run recorded.")
@click.option("--trust-record", is_flag=True,
              help="Run the job the record names even where the record does not fit the code on disk.")
def reproduce(run_id: str, project: str | None, trust_record: bool) -> None:
    """Run a logged run's job again as a new run, compare bit for bit, record the verdict on both.

    The job starts as the run was started: its MLproject entry point and parameters,
    or its module or script, and the command is shown before it runs. A record whose
    entry, sources or folder do not fit the code on disk runs nothing (exit 2) unless
    --trust-record. Exits like compare: 0 identical, 1 different, 2 error.
    Warns first when the code (sources, git) or the software and hardware differ
    from when the run was logged.
    """
    # MLflow and the replay layer only when the command runs
    from mlrepro.replay.reproduce import reproduce_run

    with user_errors():
        result = reproduce_run(run_id, project, on_drift=_warn_drift, trust_record=trust_record,
                               on_command=lambda launch: click.echo(f"mlrepro: runs {launch.describe()}", err=True))
    click.echo(f"repeated run {result.original.run_id} as run {result.new_run_id}")
    click.echo(format_comparison(result.comparison))
    sys.exit(exit_code(result.comparison))


def _warn_drift(drift: list[Difference]) -> None:
    click.echo("mlrepro: warning: this is not the code, data or environment the run was logged with (then | now):", err=True)
    for line in side_by_side(drift):
        click.echo(line, err=True)


@click.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--project", metavar="DIR", help="The folder to start the jobs in; default: the one each run recorded.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--trust-record", is_flag=True,
              help="Replay the jobs the records name even where a record does not fit the code on disk.")
def bisect(run_a: str, run_b: str, project: str | None, as_json: bool, trust_record: bool) -> None:
    """Replay two runs from the last checkpoint both logged before they part (or from the start), each in a
    fresh process with every module traced, and name the first module (and op, and line) whose output or
    gradient differs. Each replay's command is shown on stderr before it runs; a record that does not fit
    the code on disk runs nothing unless --trust-record.

    Exit 1 when a difference is named, 0 when the replays agree (it did not recur), 2 when there is
    nothing to replay from or a record does not fit.
    """
    # MLflow and the replay layer only when the command runs
    from mlrepro.replay.bisect import bisect_runs, describe

    with user_errors(), interrupted_in_one_line("bisect"):
        result = bisect_runs(run_a, run_b, project=project, trust_record=trust_record,
                             on_replay=lambda text: click.echo(f"  {text} ...", err=True))
    click.echo(result.model_dump_json(indent=2) if as_json else describe(result))
    sys.exit(EXIT_OK if result.difference is None else EXIT_DIFFERENT)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("job")
@click.argument("assignments", nargs=-1, type=click.UNPROCESSED, metavar="[FIELD=VALUE]...")
@click.option("--steps", type=click.IntRange(min=2), default=20, show_default=True,
              help="Steps each leg trains (k).")
@click.option("--resume-at", type=click.IntRange(min=1), default=None, metavar="J",
              help="The step the resumed legs start from; default: half of --steps.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record the verdict as a run in the tracking store (tag mlrepro.determinism_checked).")
def check(job: str, assignments: tuple[str, ...], steps: int, resume_at: int | None, as_json: bool,
          record: bool) -> None:
    """Is JOB deterministic here? Before a long run: STEPS steps in two fresh processes must agree bit for
    bit; a run resumed at step J must equal them; a run resumed from a checkpoint one ulp off must
    differ (the check can fail); deterministic=true is timed against false.

    JOB is a Python file that runs your job through mlrepro.job_main, or a module run as python -m JOB
    (projects.linefit, from a checkout). Exits like
    compare: 0 passed, 1 failed, 2 error.
    """
    # MLflow and the replay layer only when the command runs
    from mlflow.tracking import MlflowClient

    from mlrepro.replay.check import check_job

    with user_errors(), interrupted_in_one_line("check"):
        result = check_job(job, list(as_assignments(assignments)), steps, resume_at,
                           on_leg=None if as_json else lambda leg: click.echo(f"  running {leg} ...", err=True),
                           record_in=MlflowClient() if record else None)
    for changed in result.data_changed:
        click.echo(f"mlrepro: warning: the data on disk is not what the last run of this spec read: {changed}", err=True)
    click.echo(result.model_dump_json(indent=2) if as_json else format_check(result))
    sys.exit(EXIT_OK if result.passed else EXIT_DIFFERENT)


def format_check(result: Any) -> str:
    """The verdict table of ``mlrepro check``."""
    header = ("leg", "expected", "got", "")
    rows = [(leg.leg, leg.expected, leg.got, leg.status) for leg in result.legs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [f"mlrepro check {' '.join([result.job, *result.words])}: {result.steps} steps a leg, "
             f"{result.processes} fresh processes, {result.seconds:.1f} s"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3]
              for row in [header, *rows]]
    lines.append(f"verdict: {result.summary()}")
    if result.recorded_run:
        lines.append(f"recorded on run {result.recorded_run}: tag {keys.TAG_DETERMINISM_CHECKED}")
    return "\n".join(lines)


