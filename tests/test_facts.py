"""Each fact has one owner: every environment fact a run collects is declared in mlrepro.capture.facts,
every spec field's role is written on the field, and the MLproject's parameters are the spec classes'."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch
import yaml

from mlrepro.analysis.diagnosis import differences
from mlrepro.capture.code import capture_code
from mlrepro.capture.environment import COLLECTORS, capture_environment
from mlrepro.capture.facts import FACTS, Category, Source, declared, keys_from
from mlrepro.capture.spec import (
    BaseSpec,
    DistributedSpec,
    Role,
    build_spec,
    carried_out_fields,
    role,
)
from mlrepro.replay.reproduce import environment_drift
from mlrepro.training import distributed
from projects.cifar10.spec import Cifar10Spec
from projects.linefit.spec import LineFitSpec

REPO = Path(__file__).resolve().parent.parent


def test_every_collected_fact_is_declared_and_every_declared_one_is_collected() -> None:
    collected = set(capture_environment().facts)
    assert not {key for key in collected if declared(key) is None}
    made_here = {Source.COLLECTOR, Source.PACKAGE, Source.SWITCH, Source.VARIABLE}
    assert collected == {key for source in made_here for key in keys_from(source)} == set(COLLECTORS)


def test_the_code_records_facts_are_declared_as_the_code_records() -> None:
    assert set(capture_code().facts()) == set(keys_from(Source.CODE))


def test_the_process_groups_facts_are_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gloo world of one, in this process, as torchrun would set it up."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                        "LOCAL_RANK": "0", "NCCL_ALGO": "Ring", "GLOO_SOCKET_IFNAME": "lo"}.items():
        monkeypatch.setenv(name, value)
    world = distributed.join(torch.device("cpu"))
    try:
        facts = distributed.facts(world, torch.device("cpu"), 25.0)
    finally:
        torch.distributed.destroy_process_group()
    assert {"env.NCCL_ALGO", "env.GLOO_SOCKET_IFNAME"} <= set(facts)
    assert not {key for key in facts if declared(key) is None or declared(key).source is not Source.DISTRIBUTED}
    assert declared("env.NCCL_ALGO.rank1") is declared("env.NCCL_ALGO")  # another rank's own value


def test_a_fact_is_declared_once() -> None:
    keys = [fact.key for fact in FACTS]
    assert len(keys) == len(set(keys))


def test_a_fact_no_version_declares_is_still_compared_as_recorded_for_completeness() -> None:
    [difference] = differences({}, {}, {"renamed.switch": "a"}, {"renamed.switch": "b"})
    assert difference.category == "other" and difference.explanation.startswith("recorded for completeness")


def test_drift_is_what_the_declarations_say() -> None:
    logged = {"torch.version": "2.1", "git.untracked": "a", "determinism.cudnn_benchmark": "false", "cpu.model": "x"}
    now = {"torch.version": "2.2", "git.untracked": "b", "determinism.cudnn_benchmark": "true", "cpu.model": "y"}
    assert [d.key for d in environment_drift(logged, now)] == ["cpu.model", "torch.version"]


@pytest.mark.parametrize("spec_type", [BaseSpec, DistributedSpec])
def test_every_field_mlrepro_defines_says_its_role(spec_type: type[BaseSpec]) -> None:
    silent = [name for name, field in spec_type.model_fields.items()
              if name != "job" and not any(isinstance(item, Role) for item in field.metadata)]
    assert not silent


def test_roles_decide_the_hash_the_rank_and_what_check_sets() -> None:
    assert carried_out_fields(BaseSpec) == carried_out_fields(Cifar10Spec) \
        == ["checkpoint_every", "keep_checkpoints", "resume_from", "fingerprint_every"]  # Cifar10Spec's own default keeps the role
    assert Cifar10Spec(checkpoint_every=7, keep_checkpoints=0, fingerprint_every=0).hash == Cifar10Spec().hash
    assert Cifar10Spec(nproc=2).hash != Cifar10Spec().hash
    assert role(LineFitSpec, "steps").category is Category.SPEC
    [nproc] = differences({"nproc": "1"}, {"nproc": "2"}, {}, {})  # ranked without the job's class
    assert nproc.category == "distributed"


def _entry_points() -> dict[str, dict]:
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


@pytest.mark.parametrize(("entry_point", "spec_type"), [("main", LineFitSpec), ("cifar10", Cifar10Spec)])
def test_the_mlproject_declares_every_field_with_its_default(entry_point: str, spec_type: type[BaseSpec]) -> None:
    declared_there = _entry_points()[entry_point]
    parameters = {name: str(parameter["default"]) for name, parameter in declared_there["parameters"].items()}
    assert set(parameters) == set(spec_type.model_fields) - {"job"}
    assert build_spec(spec_type, parameters) == spec_type()  # "0.0001" there is 1e-4 here
    command = declared_there["command"]
    assert f"-m projects.{spec_type.job_name()}" in command
    assert set(re.findall(r"(\w+)=\{(\w+)\}", command)) == {(name, name) for name in parameters}
