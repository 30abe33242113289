"""The command line: parse, call the library, print. Exit codes are decided here and only here.

Exit codes, like ``cmp``:
    0  success; for compare, the runs are identical; for check, every leg passed; for bisect, the
       replays agree (the difference did not recur)
    1  compare: the runs differ; check: a leg failed; bisect: it names where the replays part
    2  bad input or an unusable store: a one-line message on stderr, nothing half-written
    3  compare: identical so far, but a run did not finish (RUNNING, KILLED, FAILED)
    4  a job or ``sync``: the tracking store did not take everything in time; the rest waits in
       the local spool, and ``mlrepro sync`` delivers it (nothing is lost)
    128+N  a job stopped by signal N (130 SIGINT, 143 SIGTERM), its run KILLED with every step recorded;
       check or bisect interrupted (130)
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click
from pydantic import ValidationError

from mlrepro.capture.spec import (
    BaseSpec,
    build_spec,
    parse_assignments,
    parse_spec,
    read_spec_file,
    registered_jobs,
)
from mlrepro.errors import MlreproError, describe_validation_error, one_line, redacted

# Nothing heavy is imported here: `mlrepro --help` needs neither MLflow nor torch, and
# compare, show and find import MLflow when they run, never torch. The training side is
# imported by the commands that train.
from mlrepro.store import keys

if TYPE_CHECKING:
    from mlrepro.analysis.compare import RunComparison, StepRange
    from mlrepro.analysis.diagnosis import Difference
    from mlrepro.capture.logged import LoggedRun
    from mlrepro.review.runs import RunSummary
    from mlrepro.training.tracking import TrackedRun

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_ERROR = 2
EXIT_UNFINISHED = 3
EXIT_PENDING = 4

TrainFunction = Callable[[Any, "TrackedRun"], None]


def fail(message: str) -> NoReturn:
    click.echo(f"mlrepro: error: {one_line(redacted(message))}", err=True)
    sys.exit(EXIT_ERROR)


@contextmanager
def user_errors(on_error: Callable[[str], None] | None = None) -> Iterator[None]:
    """Turn every user-facing failure into one line on stderr and exit code 2."""
    from mlrepro.store.spool import DeliveryPendingError

    try:
        yield
    except DeliveryPendingError as err:
        click.echo(f"mlrepro: {one_line(redacted(str(err)))}", err=True)
        sys.exit(EXIT_PENDING)
    except (ValidationError, MlreproError) as err:
        message = f"invalid input: {describe_validation_error(err)}" if isinstance(err, ValidationError) else str(err)
        if on_error is not None:
            on_error(message)
        fail(message)


@contextmanager
def interrupted_in_one_line(command: str) -> Iterator[None]:
    """Ctrl-C in a command that runs jobs of its own (check, bisect): the jobs end with it, and it
    says so in one line, exit 130, as a shell expects of an interrupted command."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"mlrepro: {command} interrupted; its legs' scratch store is removed", err=True)
        sys.exit(128 + 2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """mlrepro: bit-for-bit repeatable PyTorch runs, tracked in MLflow."""


@main.command()
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


def exit_code(comparison: RunComparison) -> int:
    return {"identical": EXIT_OK, "identical so far": EXIT_UNFINISHED}.get(comparison.verdict, EXIT_DIFFERENT)


@main.command()
@click.argument("run_id")
@click.option("--project", metavar="DIR",
              help="The folder to start the job in; default: the project folder the run recorded.")
def reproduce(run_id: str, project: str | None) -> None:
    """Run a logged run's job again as a new run, compare bit for bit, record the verdict on both.

    The job starts as the run was started: its MLproject entry point and parameters,
    or its module or script. Exits like compare: 0 identical, 1 different, 2 error.
    Warns first when the code (sources, git) or the software and hardware differ
    from when the run was logged.
    """
    from mlrepro.replay.reproduce import reproduce_run

    with user_errors():
        result = reproduce_run(run_id, project, on_drift=_warn_drift)
    click.echo(f"repeated run {result.original.run_id} as run {result.new_run_id}")
    click.echo(format_comparison(result.comparison))
    sys.exit(exit_code(result.comparison))


def _warn_drift(drift: list[Difference]) -> None:
    click.echo("mlrepro: warning: this is not the code or environment the run was logged with (then | now):", err=True)
    for line in _side_by_side(drift):
        click.echo(line, err=True)


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--project", metavar="DIR", help="The folder to start the jobs in; default: the one each run recorded.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def bisect(run_a: str, run_b: str, project: str | None, as_json: bool) -> None:
    """Replay two runs from the last checkpoint both logged before they part, each in a fresh process with
    every module traced, and name the first module (and op, and line) whose output or gradient differs.

    Exit 1 when a difference is named, 0 when the replays agree (it did not recur), 2 when there is
    nothing to replay from.
    """
    from mlrepro.replay.bisect import bisect_runs, describe

    with user_errors(), interrupted_in_one_line("bisect"):
        result = bisect_runs(run_a, run_b, project=project)
    click.echo(result.model_dump_json(indent=2) if as_json else describe(result))
    sys.exit(EXIT_OK if result.difference is None else EXIT_DIFFERENT)


@main.command(context_settings={"ignore_unknown_options": True})
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
    from mlflow.tracking import MlflowClient

    from mlrepro.replay.check import check_job

    with user_errors(), interrupted_in_one_line("check"):
        result = check_job(job, list(_as_assignments(assignments)), steps, resume_at,
                           on_leg=None if as_json else lambda leg: click.echo(f"  running {leg} ...", err=True),
                           record_in=MlflowClient() if record else None)
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


@main.command()
@click.argument("run_id")
def show(run_id: str) -> None:
    """Print a run's code, spec, environment, loss summary and recorded verdicts."""
    from mlrepro.errors import NoLossesError
    from mlrepro.review.runs import load_run
    from mlrepro.store import spool

    def say_if_pending(full_id: str) -> None:
        if full_id in spool.spooled_runs():
            click.echo(f"pending: this machine's spool ({spool.root() / full_id}) holds writes of this run the store "
                       f"does not have yet; `mlrepro sync {full_id}` delivers them")

    with user_errors():
        try:
            run = load_run(run_id)
        except NoLossesError:  # every step it logged may still be in the spool
            for spooled in spool.spooled_runs():
                if spooled.startswith(run_id):
                    say_if_pending(spooled)
            raise
    click.echo(format_run(run))
    say_if_pending(run.run_id)


@main.command(name="mark-killed")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN...")
def mark_killed(run_ids: tuple[str, ...]) -> None:
    """End RUNNING runs whose process is gone (killed with SIGKILL, or lost with its machine) as KILLED.

    Only a run whose recorded process is checked gone on this host is marked; a live one is left alone.
    """
    from mlflow.tracking import MlflowClient

    from mlrepro.store import record, spool

    with user_errors():
        client = MlflowClient()
        for run_id in run_ids:
            run_id = record.resolve_run_id(client, run_id)
            if run_id in spool.spooled_runs():  # what the killed job spooled but never delivered
                for result in spool.sync([run_id], spool.store_wait_s(), client.tracking_uri):
                    click.echo(result.describe())
            run = record.mark_killed(client, run_id)
            click.echo(f"marked run {run.run_id} KILLED: its process is gone; it logged {len(run.losses)} steps "
                       f"({run.loss_source})")


@main.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN]...")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="How long to keep trying a store that fails (default: MLREPRO_STORE_WAIT_S, else 60).")
def sync(run_ids: tuple[str, ...], wait_s: float | None) -> None:
    """Deliver what runs on this machine kept in their spool while the tracking store was away.

    With no RUN, every run with a spool. Idempotent: delivered steps are not sent again, and
    each run's record arrives in order, bit for bit. Exit 0 when nothing is left, 4 when some
    is still pending.
    """
    import mlflow

    from mlrepro.store import spool

    with user_errors():
        wait = spool.store_wait_s() if wait_s is None else wait_s
        results = spool.sync(list(run_ids), wait, mlflow.get_tracking_uri())
        if not results:
            click.echo(f"nothing to deliver: no run has a spool in {spool.root()}")
        for result in results:
            click.echo(redacted(result.describe()))
    sys.exit(EXIT_PENDING if any(result.pending is not None for result in results) else EXIT_OK)


@main.command()
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

    `mlrepro find --job linefit seed=3` finds every run of the default line fit with seed 3.
    For a job whose spec class is not importable here, FIELD=VALUE match the logged params as text.
    """
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


def format_comparison(comparison: RunComparison) -> str:
    """The verdict first, then the evidence, then the differences, most likely cause first."""
    losses = comparison.losses
    a, b = comparison.run_a, comparison.run_b
    if comparison.verdict == "identical":
        lines = [f"identical: runs {a} and {b} logged the same {losses.steps_in_both} losses, bit for bit"]
    elif comparison.verdict == "identical so far":
        lines = [f"identical so far: runs {a} and {b} logged the same {losses.steps_in_both} losses where both have "
                 "them, bit for bit", f"  {_only(losses.only_in_a)} only in A; {_only(losses.only_in_b)} only in B",
                 comparison.diagnosis]
    elif comparison.weights_differ_while_losses_agree:
        tensors = comparison.tensors
        lines = [
            f"different: runs {a} and {b} logged the same {losses.steps_in_both} losses, bit for bit, but their weights "
            f"differ from step {tensors.first_divergent_step}: {tensors.tensor} ({tensors.kind})",  # type: ignore[union-attr]
            *_tensor_lines(comparison),
            comparison.diagnosis,
        ]
    else:
        tensors = comparison.tensors
        first_tensor = f": {tensors.tensor} ({tensors.kind})" if tensors is not None and not tensors.identical \
            and tensors.first_divergent_step == comparison.first_divergent_step else ""
        lines = [
            f"different: runs {a} and {b} first differ at step {comparison.first_divergent_step}{first_tensor}",
            *_tensor_lines(comparison),
            f"  losses first differ at step {losses.first_divergent_step}",
            f"    A: {_value(losses.value_a)}",
            f"    B: {_value(losses.value_b)}",
            f"  {losses.divergent_steps} of {losses.steps_in_both} common steps differ;"
            f" {_only(losses.only_in_a)} only in A; {_only(losses.only_in_b)} only in B",
            comparison.diagnosis,
        ]
    lines += [f"note: {note}" for note in comparison.notes]
    if not comparison.differences:
        lines.append("spec and environment: the same in both runs")
    else:
        lines.append({
            "identical": "differences (A | B), none changed the losses:",
            "identical so far": "differences (A | B), none changed the steps both runs have:",
        }.get(comparison.verdict, "differences (A | B), most likely cause first:"))
        lines += _side_by_side(comparison.differences)
    return "\n".join(lines)


def _tensor_lines(comparison: RunComparison) -> list[str]:
    """Where the fingerprints part: the step, the phase, and the tensors that differ there."""
    tensors = comparison.tensors
    if tensors is None:
        return []
    if tensors.identical:
        return [f"  fingerprints: the same at all {tensors.steps_compared} steps both runs took them"]
    more = f", and {tensors.differing_count - len(tensors.differing_tensors)} more" \
        if tensors.differing_count > len(tensors.differing_tensors) else ""
    return [f"  fingerprints first differ at step {tensors.first_divergent_step} ({tensors.phase}), in forward order: "
            f"{', '.join(tensors.differing_tensors)}{more}"]


def _value(value: float | None) -> str:
    # repr is the shortest text that reads back to the same float; hex shows the bits.
    if value is None:
        return "(no such step)"
    if value != value:  # NaN: float.hex says only "nan"; two NaNs differ in sign and payload bits
        return f"nan  [bits 0x{struct.unpack('<Q', struct.pack('<d', value))[0]:016x}]"
    return f"{value!r}  [{value.hex()}]"


def _only(steps: StepRange) -> str:
    if steps.count == 0:
        return "no steps"
    if steps.count == 1:
        return f"step {steps.first}"
    return f"{steps.count} steps ({steps.first}..{steps.last})"


def _side_by_side(differences: list[Difference]) -> list[str]:
    """One line each; an explanation is printed once for a run of lines that share it."""
    key_width = max(len(d.key) for d in differences)
    values = [f"{_missing(d.value_a)} | {_missing(d.value_b)}" for d in differences]
    value_width = max(len(v) for v in values)
    lines, previous = [], None
    for difference, value in zip(differences, values):
        source = "spec" if difference.source == "spec" else "env"
        explanation = "" if difference.explanation == previous else difference.explanation
        previous = difference.explanation
        lines.append(f"  {source:<4} {difference.key:<{key_width}}  {value:<{value_width}}  {explanation}".rstrip())
    return lines


def _missing(value: str | None) -> str:
    return "(absent)" if value is None else value


def format_run(run: LoggedRun) -> str:
    """What `show` prints: spec, environment, losses, verdicts."""
    spec_title = f"spec ({run.spec.job}, hash {run.spec.hash})" if run.spec else "params (not an mlrepro spec)"
    lines = [f"run {run.run_id} ({run.state}{', deleted' if run.deleted else ''})"]
    if run.code is not None:
        lines.append(f"code: {run.code.entry_kind} {run.code.entry} in {run.code.project_dir}, "
                     f"sources {run.code.source_digest}" + (f", MLproject entry point {run.code.mlproject_entry_point}"
                                                            if run.code.mlproject_entry_point else ""))
    lines.append(f"{spec_title}:")
    lines += [f"  {key}: {value}" for key, value in sorted(run.spec_fields.items())]
    lines.append(f"environment (hash {run.tags.get(keys.TAG_ENV_HASH, 'not recorded')}):")
    lines += [f"  {key}: {value}" for key, value in sorted(run.environment.items())]
    import numpy as np

    values = run.losses.values
    finite = values[np.isfinite(values)]
    lines += [
        f"losses ({run.metric}, from the {run.loss_source}): {len(run.losses)} steps"
        f" ({run.losses.steps[0]}..{run.losses.steps[-1]}), digest {run.losses.digest}",
        f"  first {float(values[0])!r}, last {float(values[-1])!r}"
        + (f", min {float(finite.min())!r}, max {float(finite.max())!r}" if len(finite) else "")
        + (f", {len(values) - len(finite)} not finite" if len(finite) < len(values) else ""),
    ]
    from mlrepro.store.record import verdicts_from_tags

    verdicts = verdicts_from_tags(run.tags)
    lines.append("verdicts:" if verdicts else "verdicts: none recorded (mlrepro compare --log adds them)")
    lines += [f"  vs {other}: {verdict}" for other, verdict in sorted(verdicts.items())]
    return "\n".join(lines)


def format_run_table(runs: list[RunSummary]) -> str:
    if not runs:
        return "no matching runs"
    header = ("run id", "started (UTC)", "status", "job (entry)", "spec hash", "env hash", "loss digest", "verdicts")
    rows = [
        (
            run.run_id,
            run.start_time.strftime("%Y-%m-%d %H:%M:%S"),
            run.status,
            f"{run.job or '-'} ({run.entry})" if run.entry else run.job or "-",
            run.spec_hash or "-",
            run.env_hash or "-",
            run.loss_digest or "-",
            "; ".join(f"{verdict} vs {other[:8]}" for other, verdict in run.verdicts.items()) or "-",
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in [header, *rows]
    )


# --- job entry points ---------------------------------------------------------


def spec_values(spec_file: str | None, assignments: Sequence[str]) -> dict[str, Any]:
    """The fields of an optional YAML/JSON spec file, with ``field=value`` words on top."""
    values: dict[str, Any] = dict(read_spec_file(spec_file)) if spec_file else {}
    values.update(parse_assignments(_as_assignments(assignments)))
    return values


def _as_assignments(words: Sequence[str]) -> list[str]:
    """``field=value`` words, with ``--field value`` and ``--field=value`` read the same way:
    ``mlflow run`` passes a parameter its MLproject does not declare (``-P sed=4``) as ``--sed 4``,
    and that deserves the same "unknown field" line as ``sed=4``."""
    assignments, rest = [], list(words)
    while rest:
        word = rest.pop(0)
        if word.startswith("--") and len(word) > 2:
            name, sep, value = word[2:].partition("=")
            if not sep:
                value = rest.pop(0) if rest and not rest[0].startswith("--") else ""
            word = f"{name}={value}"
        assignments.append(word)
    return assignments


def run_job(spec: BaseSpec, train: TrainFunction) -> None:
    """Open the tracked, seeded run for ``spec`` and hand it to the job's training function."""
    from mlrepro.capture.code import mark_job_command_line
    from mlrepro.training import distributed
    from mlrepro.training.signals import RunInterrupted
    from mlrepro.training.tracking import start_run

    nproc = getattr(spec, "nproc", 1)
    if nproc > 1 and not distributed.launched_by_torchrun():
        # What would fail on every rank is said here, once, before torchrun starts them.
        import mlflow

        from mlrepro.store import record, spool
        from mlrepro.training.checkpoint import newest_checkpoint

        spool.store_wait_s()
        spool.ready_root()
        client = record.ready_store(mlflow.get_tracking_uri())
        if spec.resume_from:
            newest_checkpoint(client, spec)  # the run, its spec and its checkpoint
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
    def command(spec_file: str, assignments: tuple[str, ...]) -> None:
        from mlrepro.store.record import write_launcher_error

        with user_errors(on_error=write_launcher_error):
            spec = parse_spec(spec_values(spec_file, assignments))
            if spec.job not in trainers:
                raise MlreproError(f"job: {spec.job!r} is not one of this project's jobs ({', '.join(sorted(trainers))})")
            run_job(spec, trainers[spec.job]())

    return command
