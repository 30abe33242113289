"""What the read-only commands print: a comparison, a run, a table of runs."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from mlrepro.store import keys

if TYPE_CHECKING:
    from mlrepro.analysis.compare import RunComparison, StepRange
    from mlrepro.analysis.diagnosis import Difference
    from mlrepro.capture.logged import LoggedRun
    from mlrepro.review.runs import RunSummary


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
        lines += side_by_side(comparison.differences)
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


def side_by_side(differences: list[Difference]) -> list[str]:
    """One line each; an explanation is printed once for a run of lines that share it."""
    key_width = max(len(d.key) for d in differences)
    values = [f"{_missing(d.value_a)} | {_missing(d.value_b)}" for d in differences]
    value_width = max(len(v) for v in values)
    lines, previous = [], None
    for difference, value in zip(differences, values):
        source = {"spec": "spec", "data": "data"}.get(difference.source, "env")
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
    lines += [f"data: {key}, digest {dataset.digest} ({dataset.source_type}: {dataset.source[:200]})"
              for key, dataset in sorted(run.datasets.items())] or ["data: none recorded (run.log_dataset records it)"]
    lines.append(f"{spec_title}:")
    lines += [f"  {key}: {value}" for key, value in sorted(run.spec_fields.items())]
    lines.append(f"environment (hash {run.tags.get(keys.TAG_ENV_HASH, 'not recorded')}):")
    lines += [f"  {key}: {value}" for key, value in sorted(run.environment.items())]
    # NumPy only when a run is printed: `mlrepro --help` stays light
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
    # the record imports MLflow: only when a run is printed
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


