"""``mlrepro check JOB [FIELD=VALUE]...``: is this job deterministic on this machine? Asked before a long run.

Megatron's replay protocol, for any mlrepro job: k steps in two fresh processes must agree
bit for bit, losses and per-tensor fingerprints; a third process resumed from the first's
checkpoint at step j must equal it; a fourth resumed from a deliberately broken checkpoint
(its weights one ulp off) must differ, which proves that the check can fail; and the
cost of ``deterministic=true`` is timed against ``false``. The legs log into a scratch
store; the verdict is recorded in the user's store as a run of its own, whose
``mlrepro.determinism_checked`` tag the MLflow UI shows beside the job's other runs.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from mlrepro.analysis.compare import RunComparison, compare_logged_runs
from mlrepro.capture.logged import LoggedRun
from mlrepro.capture.spec import BaseSpec, carried_out_fields, parse_assignments
from mlrepro.errors import SpecError
from mlrepro.store import check_runs, checkpoints, datasets, record
from mlrepro.training.orders import Leg, LegReport, Orders, Scratch, job_command


class LegVerdict(BaseModel):
    """One line of the verdict table."""

    model_config = ConfigDict(frozen=True)

    leg: str
    expected: str
    got: str
    status: Literal["pass", "fail", "skipped", "timing"]


class CheckResult(BaseModel):
    """What ``mlrepro check`` found, as its table and the tags on the run it records."""

    model_config = ConfigDict(frozen=True)

    job: str
    words: list[str]
    steps: int
    resume_at: int
    legs: list[LegVerdict]
    passed: bool
    first_divergent_step: int | None  # where the two fresh runs parted, if they did
    first_tensor: str | None
    seconds_deterministic: float | None  # the k steps' loop, deterministic=true
    seconds_not_deterministic: float | None
    seconds: float  # the whole check
    processes: int  # legs started, each a fresh process
    recorded_run: str | None = None
    # Datasets whose digest differs from the newest run of the same spec in the user's store:
    # "data.CIFAR10: 4e369bd19f75e73e in run 66e9d372..., 46ad07f99f5cb173 now".
    data_changed: list[str] = []

    def summary(self) -> str:
        """The verdict in a few words: the tag the MLflow UI shows."""
        if self.passed:
            cost = f"; deterministic=true costs {self.seconds_deterministic / self.seconds_not_deterministic:.2f}x " \
                   "the time of false" if self.seconds_deterministic and self.seconds_not_deterministic else ""
            return (f"passed: two fresh runs of {self.steps} steps identical, resumed at step {self.resume_at} "
                    f"identical, broken resume caught{cost}")
        failed = next(leg for leg in self.legs if leg.status == "fail")
        return f"failed: {failed.leg}: {failed.got}"


def check_job(job: str, words: list[str], steps: int = 20, resume_at: int | None = None,
              on_leg: Callable[[str], None] | None = None, record_in: MlflowClient | None = None) -> CheckResult:
    """Run the protocol for ``job`` (a built-in job's name or a Python file running one) with the spec's
    ``words``; record the verdict as a run in ``record_in`` (the user's store) unless it is None."""
    began = time.perf_counter()
    command = job_command(job)
    given = parse_assignments(words)
    resume_at = _checked_request(given, steps, resume_at)
    # Checkpoints every resume_at steps, all kept; the resumed legs start from the one at resume_at, by its name.
    leg_words = [*words, f"checkpoint_every={resume_at}", "keep_checkpoints=0", "fingerprint_every=1", "resume_from="]
    command.check_words(leg_words, words)  # a typo is said at once, not after a store and a leg are made
    deterministic = given.get("deterministic", "true").strip().lower() not in ("false", "f", "0", "no", "n", "off")
    flipped = [*[w for w in words if not w.startswith("deterministic=")], f"deterministic={str(not deterministic).lower()}",
               "checkpoint_every=0", "fingerprint_every=0", "resume_from="]
    say = on_leg or (lambda _text: None)
    scratch = Scratch()
    try:
        client = scratch.client()

        def leg(name: str, leg_words: list[str], orders: Orders) -> tuple[LegReport, LoggedRun]:
            say(name)
            report = scratch.run(command, Leg(name, leg_words, orders))
            return report, record.read_run(client, report.run_id)

        report_a, a = leg("fresh run A", leg_words, Orders(stop_after=steps))
        data_changed = _data_changed(record_in, a) if record_in is not None else []
        _, b = leg("fresh run B", leg_words, Orders(stop_after=steps))
        fresh = compare_logged_runs(a, b)
        legs = [_verdict(f"two fresh runs, {steps} steps", fresh, "identical")]
        legs += _resume_legs(leg, client, scratch, a, fresh, steps, resume_at, leg_words)
        report_f, _ = leg(f"deterministic={str(not deterministic).lower()}", flipped, Orders(stop_after=steps))
        seconds = {deterministic: report_a.loop_seconds, not deterministic: report_f.loop_seconds}
        legs.append(LegVerdict(leg="deterministic=true vs false", expected="(timed)", status="timing",
                               got=_timing(seconds, steps)))
        result = CheckResult(
            job=job, words=words, steps=steps, resume_at=resume_at, legs=legs,
            passed=all(leg.status in ("pass", "timing") for leg in legs),
            first_divergent_step=fresh.first_divergent_step,
            first_tensor=fresh.tensors.tensor if fresh.tensors is not None and not fresh.tensors.identical else None,
            seconds_deterministic=seconds[True], seconds_not_deterministic=seconds[False],
            seconds=time.perf_counter() - began, processes=scratch.legs_run, data_changed=data_changed)
        if record_in is not None:
            result = result.model_copy(update={"recorded_run": _record(record_in, a, result)})
        return result
    finally:
        scratch.close()


def _data_changed(client: MlflowClient, leg: LoggedRun) -> list[str]:
    """The datasets the check's legs read whose digest differs from the newest run of the same spec in
    the user's store: the check then proves the job on other data than that run trained on."""
    if leg.spec is None or not leg.datasets:
        return []
    recorded = datasets.newest_recorded_data(client, leg.spec.hash)
    if recorded is None:
        return []
    run_id, then = recorded
    now = leg.data_digests
    return [f"{dataset.fact}: {dataset.digest} in run {run_id}, {now[dataset.fact]} now"
            for dataset in then.values() if dataset.fact in now and now[dataset.fact] != dataset.digest]


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.1f} ms"


def _verdict(name: str, comparison: RunComparison, expected: Literal["identical", "different"]) -> LegVerdict:
    if comparison.verdict == "identical":
        got = f"identical ({comparison.losses.steps_in_both} losses" + (
            f", {comparison.tensors.steps_compared * comparison.tensors.tensors_compared} fingerprints)"
            if comparison.tensors is not None else ")")
    else:
        tensors = comparison.tensors
        where = f": {tensors.tensor} ({tensors.kind}, {tensors.phase})" \
            if tensors is not None and not tensors.identical else ""
        got = f"{comparison.verdict} from step {comparison.first_divergent_step}{where}"
    passed = (comparison.verdict == "identical") == (expected == "identical")
    return LegVerdict(leg=name, expected=expected, got=got, status="pass" if passed else "fail")


def _continued(full: LoggedRun, resumed: LoggedRun, at_step: int) -> LoggedRun:
    """A run resumed from ``full``'s checkpoint, with ``full``'s steps before it: whole, as compare sees a
    resumed run."""
    fingerprints = resumed.fingerprints
    if fingerprints is not None and full.fingerprints is not None:
        fingerprints = full.fingerprints.spliced(fingerprints, at_step)
    return replace(resumed, losses=full.losses.spliced(resumed.losses, at_step), fingerprints=fingerprints)


def _one_ulp_off(checkpoint: Path, folder: Path) -> Path:
    """A copy of the checkpoint whose first floating-point weight is one ulp larger: a resume that
    lost one bit, which the check must catch."""
    # torch only to break a checkpoint, after the fresh legs ran
    import torch

    from mlrepro.training.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(checkpoint)
    model = dict(loaded.model)
    name = next((key for key, value in model.items() if torch.is_floating_point(value) and value.numel()), None)
    if name is None:
        raise SpecError("the job's checkpoint holds no floating-point weights to break")
    moved = model[name].clone()
    flat = moved.view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=flat.dtype))
    model[name] = moved
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(folder / checkpoint.name, replace(loaded, model=model))


def _record(client: MlflowClient, a: LoggedRun, result: CheckResult) -> str:
    """The verdict as a run of its own in the user's store, beside the job's runs."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "check.json"
        path.write_text(json.dumps(result.model_dump(mode="json"), indent=2))
        return check_runs.write_check(client, a, result.summary(), result.passed, path)

def _checked_request(given: dict[str, str], steps: int, resume_at: int | None) -> int:
    """Refuse what the check cannot run, before any leg starts; the step the resumed legs start at."""
    for name in carried_out_fields(BaseSpec):  # the check sets how each leg is carried out
        if name in given:
            raise SpecError(f"{name}: set by the check itself; leave it out")
    if given.get("nproc", "1") != "1":
        raise SpecError("nproc: the check runs each leg as one process; check with nproc=1 first")
    if steps < 2:
        raise SpecError(f"--steps: at least 2, to resume between them (got {steps})")
    resume_at = resume_at if resume_at is not None else steps // 2
    if not 0 < resume_at < steps:
        raise SpecError(f"--resume-at: a step between 1 and {steps - 1} (got {resume_at})")
    return resume_at


def _resume_legs(leg: Callable[[str, list[str], Orders], tuple[LegReport, LoggedRun]], client: MlflowClient,
                 scratch: Scratch, a: LoggedRun, fresh: RunComparison, steps: int, resume_at: int,
                 leg_words: list[str]) -> list[LegVerdict]:
    """A run resumed from run A's checkpoint must equal A; one resumed from it one ulp off must not."""
    resumed_leg, broken_leg = f"resumed at step {resume_at} vs the full run", "broken resume (weights one ulp off)"
    if fresh.verdict != "identical":
        reason = "not run: the fresh runs already differ"
        return [LegVerdict(leg=resumed_leg, expected="identical", got=reason, status="skipped"),
                LegVerdict(leg=broken_leg, expected="different", got=reason, status="skipped")]
    if resume_at not in checkpoints.checkpoint_steps(client, a.run_id):
        return [LegVerdict(leg=resumed_leg, expected="identical", status="fail",
                           got=f"run A logged no checkpoint at step {resume_at}: the job does not save "
                               "checkpoints every checkpoint_every steps")]
    checkpoint = checkpoints.download_checkpoint(client, a.run_id, resume_at, scratch.folder / "checkpoints")
    _, resumed = leg("resumed run", leg_words, Orders(stop_after=steps, checkpoint=str(checkpoint)))
    broken_file = _one_ulp_off(checkpoint, scratch.folder / "broken")
    _, broken = leg("broken resume", leg_words, Orders(stop_after=steps, checkpoint=str(broken_file)))
    return [_verdict(resumed_leg, compare_logged_runs(a, _continued(a, resumed, resume_at)), "identical"),
            _verdict(broken_leg, compare_logged_runs(a, _continued(a, broken, resume_at)), "different")]


def _timing(seconds: dict[bool, float], steps: int) -> str:
    return (f"{_seconds(seconds[True])} vs {_seconds(seconds[False])} for {steps} steps "
            f"({seconds[True] / seconds[False]:.2f}x)")
