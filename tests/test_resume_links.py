"""The tags that tie a resumed run to the one it continues are input: a chain of them that comes back
on itself, runs too long, or names no step is one line and exit 2, read before any artifact."""

from __future__ import annotations

import time

import mlflow
import pytest

from mlrepro.cli.main import main
from mlrepro.store import keys, resume_links
from tests.conftest import assert_one_line_error_here, run_here


def logged_run(losses: list[float], **tags: str) -> str:
    """A run with a loss history and the given tags, as anyone with access to the store can log one."""
    client = mlflow.MlflowClient()
    run_id = client.create_run("0").info.run_id
    for step, value in enumerate(losses):
        client.log_metric(run_id, "loss", value, step=step)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return run_id


def resumed_from(run_id: str, other: str, step: str = "1") -> None:
    mlflow.MlflowClient().set_tag(run_id, keys.TAG_RESUMED_FROM, other)
    mlflow.MlflowClient().set_tag(run_id, keys.TAG_RESUMED_AT_STEP, step)


def test_a_run_resumed_from_itself_or_in_a_ring_is_named_in_one_line(store: str) -> None:
    plain = logged_run([1.0, 2.0])
    itself = logged_run([1.0, 2.0])
    resumed_from(itself, itself)
    started = time.perf_counter()
    result = run_here(main, "compare", itself, plain)
    print(f"a cycle answered in {time.perf_counter() - started:.2f} s")
    assert_one_line_error_here(result, f"run {itself}: its mlrepro.resumed_from tags go round in a cycle "
                                       f"({itself[:8]} -> {itself[:8]})", "damaged or forged")
    a, b = logged_run([1.0, 2.0]), logged_run([1.0, 2.0])
    resumed_from(a, b)
    resumed_from(b, a)
    assert_one_line_error_here(run_here(main, "compare", plain, b),
                               f"({b[:8]} -> {a[:8]} -> {b[:8]})", "damaged or forged")


def test_a_chain_longer_than_the_limit_is_refused(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resume_links, "MAX_RESUME_CHAIN", 2)
    first = logged_run([1.0])
    chain = [first]
    for _ in range(3):
        chain.append(logged_run([1.0, 2.0]))
        resumed_from(chain[-1], chain[-2])
    assert_one_line_error_here(run_here(main, "show", chain[-1]), "go back more than 2 runs")
    assert run_here(main, "show", chain[-2]).exit_code == 0  # two runs back: read, stitched


def test_a_resume_step_that_is_no_step_is_named_not_read(store: str) -> None:
    first, plain = logged_run([1.0, 2.0, 3.0]), logged_run([1.0, 2.0, 3.0])
    second = logged_run([2.0, 3.0])
    resumed_from(second, first, step="abc")
    assert_one_line_error_here(run_here(main, "compare", second, plain),
                               f"run {second}: its tag mlrepro.resumed_at_step is 'abc', not a step")
