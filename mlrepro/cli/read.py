"""The commands that only read runs: compare, show, find. They import MLflow when they run and
never torch or the training layer (an import-linter contract), so they answer in a second."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from mlrepro.capture.spec import parse_spec, registered_jobs
from mlrepro.cli.exits import (
    EXIT_DIFFERENT,
    EXIT_OK,
    exit_code,
    user_errors,
)
from mlrepro.cli.words import spec_values

if TYPE_CHECKING:
    pass

from mlrepro.cli.formatting import format_comparison, format_run, format_run_table


@click.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
@click.option("--log", "log_verdict", is_flag=True, help="Also tag both runs with the verdict and attach a plot.")
@click.option("--on-launched-run", is_flag=True,
              help="Record the verdict on the run `mlflow run` opened for this comparison, which then ends "
                   "FINISHED whatever the verdict (see --fail-on-difference).")
@click.option("--fail-on-difference", type=click.BOOL, default=False, show_default=True,
              help="With --on-launched-run: exit 1 (the run ends FAILED) when the runs differ, for CI gates.")
def compare(run_a: str, run_b: str, as_json: bool, log_verdict: bool, on_launched_run: bool,
            fail_on_difference: bool) -> None:
    """Check two runs' per-step losses for bitwise equality (exit 0 identical, 1 different, 2 error,
    3 identical so far but a run did not finish).

    RUN_A and RUN_B are run ids, or unique prefixes of 8 or more hex digits. The
    tracking store is MLflow's: MLFLOW_TRACKING_URI, else ./mlflow.db.
    """
    # MLflow only when the command runs: `mlrepro --help` stays light
    from mlrepro.review.runs import compare_runs, load_run
    from mlrepro.review.verdicts import record_comparison, record_on_comparison_run
    from mlrepro.store.record import write_launcher_error

    with user_errors(on_error=write_launcher_error if on_launched_run else None):
        a, b = load_run(run_a), load_run(run_b)
        comparison = compare_runs(a, b)
        recorded = record_comparison(comparison, a, b) if log_verdict else []
        comparison_run = record_on_comparison_run(comparison, a, b) if on_launched_run else None
    click.echo(comparison.model_dump_json(indent=2) if as_json else format_comparison(comparison))
    for verdict in recorded:
        click.echo(f"recorded on run {verdict.run_id}: tag {verdict.tag} = {verdict.text!r}, plot {verdict.plot}",
                   err=as_json)
    if comparison_run is not None:
        click.echo(f"recorded on run {comparison_run}: the verdict and the plot", err=as_json)
        sys.exit(EXIT_DIFFERENT if fail_on_difference and not comparison.identical else EXIT_OK)
    sys.exit(exit_code(comparison))


@click.command()
@click.argument("run_id")
def show(run_id: str) -> None:
    """Print a run's code, spec, environment, loss summary and recorded verdicts."""
    # MLflow only when the command runs: `mlrepro --help` stays light
    from mlrepro.errors import NoLossesError
    from mlrepro.review.runs import load_run
    from mlrepro.store import spool, sync

    def say_if_pending(full_id: str) -> None:
        if full_id in sync.spooled_runs():
            click.echo(f"pending: this machine's spool ({spool.root() / full_id}) holds writes of this run the store "
                       f"does not have yet; `mlrepro sync {full_id}` delivers them")

    with user_errors():
        try:
            run = load_run(run_id)
        except NoLossesError:  # every step it logged may still be in the spool
            for spooled in sync.spooled_runs():
                if spooled.startswith(run_id):
                    say_if_pending(spooled)
            raise
    click.echo(format_run(run))
    say_if_pending(run.run_id)


@click.command()
@click.argument("assignments", nargs=-1, metavar="[FIELD=VALUE]...")
@click.option("--job", help="The job the FIELD=VALUE words are for (linefit, cifar10, or your own).")
@click.option("--spec", "spec_file", metavar="FILE", help="Find runs of the spec in this YAML/JSON file.")
@click.option("--spec-hash", help="Find runs whose spec has this hash (tag mlrepro.spec_hash).")
@click.option("--env-hash", help="Find runs whose environment has this hash (tag mlrepro.env_hash).")
@click.option("--digest", help="Find runs whose losses have this digest (tag mlrepro.loss_digest).")
@click.option("--experiment", help="Experiment name or id; default: every active experiment.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
def find(
    assignments: tuple[str, ...],
    job: str | None,
    spec_file: str | None,
    spec_hash: str | None,
    env_hash: str | None,
    digest: str | None,
    experiment: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first: of a spec (file or FIELD=VALUE words, defaults filled in), hash, or experiment.

    `mlrepro find --job linefit seed=3` finds every line-fit run with seed 3: FIELD=VALUE match the logged
    params as text, since reading runs never imports a job's code (find_runs(spec=...) in Python fills in
    a spec's defaults).
    """
    # MLflow only when the command runs: `mlrepro --help` stays light
    from mlrepro.review.runs import find_runs

    with user_errors():
        spec, by_job, params = None, None, {}
        if spec_file or assignments or job:
            values = spec_values(spec_file, assignments)
            if job:
                values.setdefault("job", job)
            if isinstance(values.get("job"), str) and values["job"] not in registered_jobs():
                by_job = values.pop("job")
                params = {name: _param_word(value) for name, value in values.items()}
            else:
                spec = parse_spec(values)
        runs = find_runs(spec=spec, job=by_job, params=params, spec_hash=spec_hash, env_hash=env_hash,
                         loss_digest=digest, experiment=experiment)
    if as_json:
        click.echo(json.dumps([run.model_dump(mode="json") for run in runs], indent=2))
    else:
        click.echo(format_run_table(runs))


def _param_word(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


