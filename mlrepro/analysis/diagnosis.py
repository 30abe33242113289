"""Why two runs differ: rank what differs between them by how likely it is to break bitwise equality.

Pure: two runs' spec fields, environment facts and dataset digests in, ranked and explained differences
out. The order is the order in which a person should look: other code (another script, or changed
sources of the job) computes something else; other data trains something else; a different device or GPU model makes
equal bits unlikely on its own; so does another number of processes, another
communication backend or DDP bucket size; another library version changes kernels; then
the determinism switches, the thread count, the seed, the other spec fields, string
hashing (it matters only where a job iterates a set of strings), and last the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mlrepro.capture.facts import Category, fact_of
from mlrepro.capture.spec import DistributedSpec, role


class Difference(BaseModel):
    """A spec field or environment fact that differs (``None`` where a run lacks it), and how it can change the bits."""

    model_config = ConfigDict(frozen=True)

    source: Literal["spec", "environment", "data"]
    key: str
    value_a: str | None
    value_b: str | None
    category: str
    explanation: str


def differences(
    spec_a: Mapping[str, str], spec_b: Mapping[str, str], environment_a: Mapping[str, str],
    environment_b: Mapping[str, str], spec_type: type[BaseModel] | None = None,
    data_a: Mapping[str, str] | None = None, data_b: Mapping[str, str] | None = None,
) -> list[Difference]:
    """Every differing field and fact, most likely cause first: a spec field ranked and explained by
    its role in ``spec_type`` (the fields every job may have where the class is not known), a fact by
    its declaration (``mlrepro.capture.facts``).

    Within a category the spec field (the cause) comes before the environment
    fact that records its effect: ``threads`` before ``determinism.intra_op_threads``.
    """
    found = []
    # Datasets by their digests, keyed as facts (data.<name>, drawn_data.<name>). Only where both runs
    # recorded their data: a run logged before mlrepro recorded it says nothing about its data.
    data = (data_a, data_b) if data_a and data_b else ({}, {})
    for source, a, b in (("spec", spec_a, spec_b), ("environment", environment_a, environment_b), ("data", *data)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) == b.get(key):
                continue
            category, explanation = _explain(source, key, spec_type or DistributedSpec)
            difference = Difference(source=source, key=key, value_a=a.get(key), value_b=b.get(key),
                                    category=category.name.lower(), explanation=explanation)
            found.append((category, source != "spec", difference))
    found.sort(key=lambda entry: entry[:2])
    return [difference for _, _, difference in found]


def _explain(source: str, key: str, spec_type: type[BaseModel]) -> tuple[Category, str]:
    if source == "spec":
        field = role(spec_type, key)
        return field.category, field.explanation
    fact = fact_of(key)
    return fact.category, fact.explanation


def diagnose(identical: bool, ranked: list[Difference], environment_a: Mapping[str, str],
             environment_b: Mapping[str, str]) -> str:
    """One sentence on the verdict's most likely reason."""
    if identical:
        return "identical bit for bit" + ("; the differences listed did not change the losses" if ranked else "")
    if ranked:
        first = ranked[0]
        return f"most likely cause: {first.key} ({first.value_a} | {first.value_b}): {first.explanation}"
    switch = "determinism.deterministic_algorithms"
    if environment_a.get(switch) == environment_b.get(switch) == "true":
        return (
            "nothing recorded differs, and torch.use_deterministic_algorithms(True) was already on in both runs: "
            "look for randomness mlrepro does not reach (an unseeded generator of your own, files read in "
            "directory order, a custom CUDA kernel using atomics)"
        )
    return (
        "nothing recorded differs: a nondeterministic operation is the likely cause; run with "
        "torch.use_deterministic_algorithms(True) (spec deterministic=true) and torch raises at the first one, naming it"
    )
