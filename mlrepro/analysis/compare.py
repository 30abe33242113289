"""Bitwise comparison of two runs' losses, and what differs between their specs and environments.

Pure: arrays and records in, typed verdicts out. Loading runs from MLflow is
``mlrepro.review.runs``'s job.

"Identical" means the same bits at every step: ``0.1 + 0.2`` and ``0.3`` differ,
``+0.0`` and ``-0.0`` differ, and a NaN equals a NaN only with the same payload.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, computed_field

from mlrepro.analysis.diagnosis import Difference, diagnose, differences
from mlrepro.analysis.tensors import TensorComparison, compare_fingerprints
from mlrepro.capture.logged import LoggedRun
from mlrepro.capture.losses import LossSeries, as_the_store_keeps
from mlrepro.capture.spec import BaseSpec


class StepRange(BaseModel):
    """Steps present in one run only, summarised: a million of them must not flood a terminal."""

    model_config = ConfigDict(frozen=True)

    count: int
    first: int | None
    last: int | None


class LossComparison(BaseModel):
    """The verdict on two loss sequences."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    identical: bool
    steps_in_a: int
    steps_in_b: int
    steps_in_both: int
    divergent_steps: int
    first_divergent_step: int | None
    value_a: float | None  # at first_divergent_step; None where run A has no such step
    value_b: float | None
    only_in_a: StepRange
    only_in_b: StepRange
    # Common steps where a side came from MLflow's metric history: compared as the store keeps them.
    steps_compared_as_stored: int = 0


def _step_range(steps: np.ndarray) -> StepRange:
    if len(steps) == 0:
        return StepRange(count=0, first=None, last=None)
    return StepRange(count=len(steps), first=int(steps[0]), last=int(steps[-1]))


def compare_losses(a: LossSeries, b: LossSeries) -> LossComparison:
    """Compare step by step, bit for bit; the first divergence may be a step only one run has.

    A step that one side only has from MLflow's metric history is compared as the store keeps
    values (inf as max-float, one NaN, no -0.0): the exact bits on the other side are brought
    to the same form, so the store's rounding is never taken for a difference."""
    common, index_a, index_b = np.intersect1d(a.steps, b.steps, assume_unique=True, return_indices=True)
    values_a, values_b = a.values[index_a], b.values[index_b]
    as_stored = a.stored_mask[index_a] | b.stored_mask[index_b]
    if as_stored.any():
        values_a = np.where(as_stored, as_the_store_keeps(values_a), values_a)
        values_b = np.where(as_stored, as_the_store_keeps(values_b), values_b)
    differs = values_a.view(np.uint64) != values_b.view(np.uint64)
    only_a = np.setdiff1d(a.steps, b.steps, assume_unique=True)
    only_b = np.setdiff1d(b.steps, a.steps, assume_unique=True)

    candidates = [int(common[differs][0])] if differs.any() else []
    candidates += [int(steps[0]) for steps in (only_a, only_b) if len(steps)]
    first = min(candidates) if candidates else None
    return LossComparison(
        identical=first is None and len(a) > 0,
        steps_in_a=len(a),
        steps_in_b=len(b),
        steps_in_both=len(common),
        divergent_steps=int(differs.sum()),
        first_divergent_step=first,
        value_a=_value_at(a, first),
        value_b=_value_at(b, first),
        only_in_a=_step_range(only_a),
        only_in_b=_step_range(only_b),
        steps_compared_as_stored=int(as_stored.sum()),
    )


def _value_at(series: LossSeries, step: int | None) -> float | None:
    if step is None:
        return None
    position = int(np.searchsorted(series.steps, step))
    if position < len(series) and series.steps[position] == step:
        return float(series.values[position])
    return None


class RunComparison(BaseModel):
    """What ``mlrepro compare`` prints: the verdict and the likely causes of a difference."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    run_a: str
    run_b: str
    # "identical so far": no common step differs, but a run did not finish, so the rest is unknown.
    verdict: Literal["identical", "identical so far", "different"]
    losses: LossComparison
    # Where the per-tensor fingerprints first differ; None unless both runs took fingerprints.
    tensors: TensorComparison | None = None
    differences: list[Difference]  # spec fields and environment facts, most likely cause first
    diagnosis: str
    notes: list[str] = []  # what the reader must know to trust the verdict: deleted runs, stored values

    @computed_field  # type: ignore[prop-decorator]
    @property
    def identical(self) -> bool:
        return self.verdict == "identical"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def first_divergent_step(self) -> int | None:
        """The first step at which the losses or any fingerprint differ."""
        found = [step for step in (self.losses.first_divergent_step,
                                   self.tensors.first_divergent_step if self.tensors else None) if step is not None]
        return min(found) if found else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def weights_differ_while_losses_agree(self) -> bool:
        """The losses are the same bit for bit, and the weights or gradients are not."""
        return self.losses.divergent_steps == 0 and self.tensors is not None and not self.tensors.identical


def compare_logged_runs(a: LoggedRun, b: LoggedRun) -> RunComparison:
    """Compare two loaded runs: losses bit for bit, the spec and environment side by side, and
    how each run ended: a run that stopped early is not a difference, and never "nondeterminism"."""
    losses = compare_losses(a.losses, b.losses)
    tensors = compare_fingerprints(a.fingerprints, b.fingerprints) \
        if a.fingerprints is not None and b.fingerprints is not None else None
    tensors_differ = tensors is not None and not tensors.identical
    ranked = differences(a.spec_fields, b.spec_fields, a.environment, b.environment, _spec_type(a, b),
                         a.data_digests, b.data_digests)
    unfinished = [(name, run) for name, run in (("A", a), ("B", b)) if run.unfinished]
    if losses.divergent_steps == 0 and not tensors_differ and unfinished and len(a.losses) and len(b.losses):
        verdict = "identical so far"
        stopped = "; ".join(_how_far(name, run) for name, run in unfinished)
        diagnosis = (f"identical so far: {stopped}; the {losses.steps_in_both} steps both runs have are the same, "
                     "and what came after is unknown")
    else:
        verdict = "identical" if losses.identical and not tensors_differ else "different"
        diagnosis = diagnose(verdict == "identical", ranked, a.environment, b.environment)
        if tensors_differ:  # plainly first where the losses hide it; else after the likely cause
            where = _where_tensors_part(tensors, losses)  # type: ignore[arg-type]
            diagnosis = f"{where}; {diagnosis}" if losses.divergent_steps == 0 else f"{diagnosis}; {where}"
    notes = [f"run {run.run_id} ({name}) is deleted: it is in the tracking store's trash" for name, run in (("A", a), ("B", b))
             if run.deleted]
    for name, run, other in (("A", a, b), ("B", b, a)):
        if run.fingerprints is None and other.fingerprints is not None:
            notes.append(f"run {run.run_id} ({name}) {_why_no_fingerprints(run)}: compared by its losses only")
    if losses.steps_compared_as_stored:
        notes.append(f"{losses.steps_compared_as_stored} steps came from MLflow's metric history, which keeps neither "
                     "inf, nor NaN payloads, nor -0.0: they were compared as the store keeps them")
    return RunComparison(
        run_a=a.run_id,
        run_b=b.run_id,
        verdict=verdict,
        losses=losses,
        tensors=tensors,
        differences=ranked,
        diagnosis=diagnosis,
        notes=notes,
    )


def _how_far(name: str, run: LoggedRun) -> str:
    """How far an unfinished run got: a run whose process still lives is running, not stopped."""
    step = int(run.losses.steps[-1])
    if run.still_running:
        where = "" if run.process == "alive" else " on another host"
        return f"{name} is still running{where} (step {step} so far)"
    return f"{name} stopped at step {step} ({run.state})"


def _why_no_fingerprints(run: LoggedRun) -> str:
    """Why a run has no fingerprints to compare: not asked for, not written yet, or never written."""
    if run.spec is not None and run.spec.model_dump().get("fingerprint_every") == 0:
        return "took no fingerprints (fingerprint_every=0)"
    if run.still_running:
        return "has written no fingerprints yet: they reach the store with its exact record, at run.flush() and at its end"
    if run.unfinished:
        return f"left no fingerprints: it ended {run.state} before writing its exact record"
    return "took no fingerprints (logged before mlrepro took them, or by a job that never fingerprinted)"


def _where_tensors_part(tensors: TensorComparison, losses: LossComparison) -> str:
    """The fingerprints' verdict in one sentence, said plainly when the losses hide it."""
    where = f"{tensors.tensor} ({tensors.kind}) first differs at step {tensors.first_divergent_step}"
    if losses.divergent_steps == 0:
        return f"the losses are identical, but the weights are not: {where}; {tensors.explanation}"
    loss_step = losses.first_divergent_step
    if loss_step is not None and tensors.first_divergent_step is not None and tensors.first_divergent_step < loss_step:
        return f"{where}, before the losses part at step {loss_step}; {tensors.explanation}"
    return f"{where}; {tensors.explanation}"


def _spec_type(a: LoggedRun, b: LoggedRun) -> type[BaseSpec] | None:
    """The class both runs' specs are, where this process has it: its fields' roles rank them."""
    types = {type(run.spec) for run in (a, b)}
    kind = types.pop() if len(types) == 1 else None
    return kind if kind is not None and issubclass(kind, BaseSpec) else None
