"""The picture of a comparison: both loss curves, their difference, the first divergence marked.

Uses matplotlib's object API (``Figure``), not pyplot: no global backend is
switched and no window opens in the user's process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mlrepro.analysis.compare import LossSeries, RunComparison


def plot_comparison(a: LossSeries, b: LossSeries, comparison: RunComparison, path: str | Path) -> Path:
    """Write a PNG of the two runs' losses (top) and B - A on their common steps (bottom)."""
    figure = Figure(figsize=(9, 6), layout="constrained")
    curves, gap = figure.subplots(2, 1, sharex=True)
    label_a, label_b = f"A {comparison.run_a[:8]}", f"B {comparison.run_b[:8]}"
    curves.plot(a.steps, a.values, label=label_a, linewidth=1.2)
    curves.plot(b.steps, b.values, label=label_b, linewidth=1.0, linestyle="--")
    finite = np.concatenate([a.values, b.values])
    finite = finite[np.isfinite(finite)]
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 100:
        curves.set_yscale("log")  # a loss falling over decades; a flat one reads better on a linear scale
    curves.set_ylabel("loss")
    curves.legend(loc="upper right")

    common, index_a, index_b = np.intersect1d(a.steps, b.steps, assume_unique=True, return_indices=True)
    gap.plot(common, b.values[index_b] - a.values[index_a], color="tab:red", linewidth=1.0)
    gap.axhline(0.0, color="grey", linewidth=0.5)
    gap.set_ylabel("B - A")
    gap.set_xlabel("step")

    step = comparison.first_divergent_step
    if step is not None:
        for axes in (curves, gap):
            axes.axvline(step, color="black", linestyle=":", linewidth=1.0)
        gap.annotate(f"first divergence: step {step}", xy=(step, 0.0), xytext=(8, 12),
                     textcoords="offset points", fontsize=9)
    tensors = comparison.tensors
    if tensors is not None and not tensors.identical and tensors.first_divergent_step is not None:
        # Where the weights part, which may be before (or without) any loss that differs.
        for axes in (curves, gap):
            axes.axvline(tensors.first_divergent_step, color="tab:purple", linestyle="--", linewidth=1.0)
        gap.annotate(f"first tensor: {tensors.tensor} ({tensors.kind}, {tensors.phase}), step "
                     f"{tensors.first_divergent_step}", xy=(tensors.first_divergent_step, 0.0), xytext=(8, -16),
                     textcoords="offset points", fontsize=9, color="tab:purple")
    title = "identical bit for bit" if comparison.identical else f"different from step {step}"
    if comparison.weights_differ_while_losses_agree:
        title += ": the losses agree, the weights do not"
    figure.suptitle(f"{label_a} vs {label_b}: {title}")
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path
