"""``mlrepro bisect RUN_A RUN_B``: replay two runs from their last common checkpoint and name the
first module, and op, where they part.

Compare says at which step (and, with fingerprints, which tensor) two runs part. Bisect goes
further: it takes the last checkpoint both runs logged before that step (or, where none is left,
the start of the job), starts each run's own job from there in a fresh process with the replay trace on
(``mlrepro.training.tracing``), up to the step, and walks both traces side by side. The first
event that differs is where the computation parted: a parameter the update made
otherwise, an op's output in the forward pass (with the line that called it), a
module's output, or a gradient in the backward pass.

A difference that does not recur in the replays (both replays agree) is said as such:
what differed then was not in the code's arithmetic on this machine now.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from mlrepro.analysis.compare import RunComparison, compare_logged_runs
from mlrepro.capture.logged import LoggedRun
from mlrepro.errors import BisectError
from mlrepro.replay.reproduce import hash_seed_of, replay_command
from mlrepro.replay.trust import Launch
from mlrepro.store import checkpoints, opening, record
from mlrepro.training.orders import JobCommand, Leg, Orders, Scratch

_PHASE_WORDS = {
    "weights": "the weights the step starts from (made by the update before)",
    "op": "the output of an op in the forward pass",
    "forward": "a module's output",
    "backward": "the gradient arriving at a module's output, in backward",
}


class TraceDifference(BaseModel):
    """The first event at which two replays part."""

    model_config = ConfigDict(frozen=True)

    step: int
    phase: Literal["weights", "op", "forward", "backward", "path"]
    where: str  # the parameter, "module: op", or the module
    module: str
    location: str | None  # the line of code that called the op, where known
    hash_a: int | None
    hash_b: int | None
    events_compared: int
    explanation: str


class BisectResult(BaseModel):
    """What ``mlrepro bisect`` found."""

    model_config = ConfigDict(frozen=True)

    run_a: str
    run_b: str
    first_divergent_step: int  # where compare says the runs part
    checkpoint_step: int  # the replays started here
    from_start: bool = False  # no checkpoint to start from: the replays ran the job from its start (step 0)
    replayed_steps: int  # steps traced in each replay
    difference: TraceDifference | None  # None: the replays agree; the difference did not recur


def first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> TraceDifference | None:
    """Walk two traces in time order; the first event whose bits (or whose place) differ."""
    for index, (event_a, event_b) in enumerate(zip(a, b)):
        key_a = (event_a["step"], event_a["phase"], event_a["where"])
        key_b = (event_b["step"], event_b["phase"], event_b["where"])
        module = str(event_a["where"]).split(":")[0] if event_a["phase"] != "weights" \
            else str(event_a["where"]).rpartition(".")[0] or str(event_a["where"])
        if key_a != key_b:
            return TraceDifference(
                step=event_a["step"], phase="path", where=f"{event_a['where']} | {event_b['where']}", module=module,
                location=event_a.get("location") or event_b.get("location"), hash_a=None, hash_b=None,
                events_compared=index,
                explanation=f"the replays took different paths at step {event_a['step']}: A's next was "
                            f"{event_a['phase']} {event_a['where']}, B's {event_b['phase']} {event_b['where']}")
        if event_a["hash"] != event_b["hash"] or event_a["shape"] != event_b["shape"]:
            return TraceDifference(
                step=event_a["step"], phase=event_a["phase"], where=event_a["where"], module=module,
                location=event_a.get("location"), hash_a=event_a["hash"], hash_b=event_b["hash"],
                events_compared=index + 1,
                explanation=f"{_PHASE_WORDS[event_a['phase']]} differs first: {event_a['where']} at step {event_a['step']}")
    if len(a) != len(b):
        longer, name = (a, "A") if len(a) > len(b) else (b, "B")
        extra = longer[min(len(a), len(b))]
        return TraceDifference(
            step=extra["step"], phase="path", where=extra["where"], module=str(extra["where"]).split(":")[0],
            location=extra.get("location"), hash_a=None, hash_b=None, events_compared=min(len(a), len(b)),
            explanation=f"replay {name} went on where the other stopped: {extra['phase']} {extra['where']}")
    return None


def _start_step(comparison: RunComparison) -> int:
    """The latest step a replay may start at: the first step that differs, or, where the weights
    parted (made by the update of an earlier step), the step after the last fingerprints that agreed."""
    step = comparison.first_divergent_step
    tensors = comparison.tensors
    if tensors is not None and tensors.first_divergent_step == step and tensors.kind == "parameter":
        return tensors.previous_step_compared + 1 if tensors.previous_step_compared is not None else 0
    return step  # type: ignore[return-value]


def bisect_runs(run_a: str, run_b: str, client: MlflowClient | None = None, project: str | Path | None = None,
                on_replay: Callable[[str], None] | None = None, trust_record: bool = False) -> BisectResult:
    """Replay both runs from their last common checkpoint to where they part, in two fresh processes;
    ``on_replay`` hears of each replay as it starts, with its command. Both records are checked against
    the code on disk (``mlrepro.replay.trust``) before either replay starts, unless ``trust_record``."""
    client = client or opening.existing_store()
    a, b = record.read_run(client, run_a), record.read_run(client, run_b)
    comparison = compare_logged_runs(a, b)
    if comparison.first_divergent_step is None or comparison.verdict != "different":
        raise BisectError(f"runs {a.run_id} and {b.run_id} do not part ({comparison.verdict}): nothing to bisect")
    for run in (a, b):
        if run.spec is None:
            raise BisectError(f"run {run.run_id} was not logged by an mlrepro job: there is no job to replay")
        if int(run.spec_fields.get("nproc", "1")) > 1:
            raise BisectError(f"run {run.run_id} trained with nproc={run.spec_fields['nproc']}: bisect replays "
                              "one process; compare runs of one process")
    divergent, latest_start = comparison.first_divergent_step, _start_step(comparison)
    common = sorted(set(checkpoints.checkpoint_steps(client, a.run_id)) & set(checkpoints.checkpoint_steps(client, b.run_id)))
    resumed = any(run.spec_fields.get("resume_from") for run in (a, b))
    start = replay_start(common, latest_start, from_start=not resumed,
                         parting=f"runs {a.run_id[:8]} and {b.run_id[:8]} part at step {divergent}")
    scratch = Scratch()
    try:
        spec_files = {name: _spec_file(scratch, run, name) for name, run in (("A", a), ("B", b))}
        commands = {name: replay_command(run, spec_files[name], project, trust_record)  # both, before either runs
                    for name, run in (("A", a), ("B", b))}
        traces = []
        for name, run in (("A", a), ("B", b)):
            if on_replay is not None:
                origin = f"from its checkpoint at step {start}" if start is not None else "from the start"
                on_replay(f"replaying run {name} ({run.run_id[:8]}) {origin} to step {divergent}, every module "
                          f"traced: {Launch(*commands[name][:2]).describe()}")
            traces.append(_replay(client, scratch, run, name, start, divergent, commands[name]))
    finally:
        scratch.close()
    for name, events in zip("AB", traces):
        refuse_unless_traced(events, name, divergent)
    return BisectResult(run_a=a.run_id, run_b=b.run_id, first_divergent_step=divergent, checkpoint_step=start or 0,
                        from_start=start is None, replayed_steps=divergent - (start or 0) + 1,
                        difference=first_difference(*traces))


def replay_start(common: list[int], latest_start: int, from_start: bool, parting: str) -> int | None:
    """Where both replays start: the last checkpoint the runs have in common at or before
    ``latest_start``, or, where there is none (none logged, none left by ``keep_checkpoints``, or the
    runs part before the first), None: the start of the job, which only runs that trained from step 0
    in one go (``from_start``, no ``resume_from``) can be replayed from."""
    usable = [step for step in common if step <= latest_start]
    if usable:
        return usable[-1]
    if from_start:
        return None
    raise BisectError(f"{parting}, and have no checkpoint in common at or before step {latest_start} to replay "
                      "from, and a run that was resumed cannot be replayed from its start"
                      + (f" (in common: steps {', '.join(map(str, common))})" if common else ""))


def refuse_unless_traced(events: list[dict[str, Any]], name: str, step: int) -> None:
    """Two replays that traced nothing of the step where the runs part cannot be said to agree there:
    say what the replay traced instead."""
    if any(event["step"] == step for event in events):
        return
    if not events:
        seen = "nothing: no module with trainable parameters ran a training forward"
    else:
        steps = sorted({event["step"] for event in events})
        modules = sorted({str(event["where"]).split(":")[0].split(".")[0] for event in events})
        seen = f"steps {steps[0]}..{steps[-1]} only, of {', '.join(modules[:5])}"
    raise BisectError(f"the replay of run {name} traced no event of step {step}, where the runs part (it traced "
                      f"{seen}); call run.watch(model) so that the replay follows the model the job trains")


def _spec_file(scratch: Scratch, run: LoggedRun, name: str) -> Path:
    """The run's spec for its replay: no checkpoints, no resume."""
    fields = {**run.spec.model_dump(mode="json"), "checkpoint_every": 0, "resume_from": ""}  # type: ignore[union-attr]
    spec_file = scratch.folder / f"spec-{name}.json"
    spec_file.write_text(json.dumps(fields))
    return spec_file


def _replay(client: MlflowClient, scratch: Scratch, run: LoggedRun, name: str, start: int | None, until: int,
            launch: tuple[list[str], Path, Path]) -> list[dict[str, Any]]:
    """Run ``run``'s job (``launch``: its command, folder and project) from its checkpoint at ``start``
    (None: from its start) to step ``until``, traced; the trace's events."""
    checkpoint = None if start is None else \
        checkpoints.download_checkpoint(client, run.run_id, start, scratch.folder / "checkpoints")
    command, cwd, folder = launch
    trace = scratch.folder / f"trace-{name}.json"
    hash_seed = hash_seed_of(run)
    leg = Leg(name=f"replay of run {name}", words=[],
              orders=Orders(checkpoint=None if checkpoint is None else str(checkpoint), trace=str(trace),
                            trace_until=until),
              env={"PYTHONHASHSEED": hash_seed} if hash_seed is not None else None)
    scratch.run(JobCommand(command, cwd, [str(folder)]), leg)
    return json.loads(trace.read_text())["events"]


def describe(result: BisectResult) -> str:
    """What the command line prints."""
    origin = "from the start" if result.from_start else f"from their checkpoint at step {result.checkpoint_step}"
    head = (f"replayed runs {result.run_a} (A) and {result.run_b} (B) {origin} to step "
            f"{result.first_divergent_step}, each in a fresh process")
    difference = result.difference
    if difference is None:
        return "\n".join([head, f"the replays agree at every traced event: the difference at step "
                                f"{result.first_divergent_step} did not recur here (it came from outside the job's "
                                "arithmetic, or from what only the first runs had)"])
    what = {"weights": f"parameter {difference.where}, as the step starts",
            "op": f"in module {difference.module}: op {difference.where.partition(': ')[2]}",
            "forward": f"in module {difference.module}: its output",
            "backward": f"in module {difference.module}: the gradient at its output",
            "path": f"the replays ran different code: {difference.where}"}[difference.phase]
    lines = [head, f"first difference: step {difference.step}, {what}"]
    if difference.location:
        lines.append(f"  at {difference.location}")
    if difference.hash_a is not None:
        lines.append(f"  fingerprints A {difference.hash_a:08x} | B {difference.hash_b:08x}, after "
                     f"{difference.events_compared - 1} events that agree")
    lines.append(f"  {difference.explanation}")
    return "\n".join(lines)
