"""Run specs: the seed's defaults, one clear line for every bad input, stable hashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlrepro.capture.spec import (
    MAX_SEED,
    build_spec,
    parse_assignments,
    parse_spec,
    read_spec_file,
    spec_hash,
)
from mlrepro.errors import SpecError
from projects.cifar10.spec import Cifar10Spec
from projects.linefit.spec import LineFitSpec


def test_line_fit_defaults_are_the_seeds() -> None:
    spec = LineFitSpec()
    assert (spec.seed, spec.steps, spec.lr, spec.hidden) == (3, 1000, 1e-4, 100)
    assert spec.deterministic is True and spec.metric == "loss" and spec.threads == 1


def test_text_values_from_the_command_line_are_parsed() -> None:
    spec = build_spec(LineFitSpec, parse_assignments(["seed=4", "lr=1e-3", "deterministic=false", "device=cpu"]))
    assert (spec.seed, spec.lr, spec.deterministic, spec.device) == (4, 1e-3, False, "cpu")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"seed": "-1"}, f"seed: must be from 0 to {MAX_SEED} (got '-1')"),
        ({"seed": str(MAX_SEED + 1)}, f"seed: must be from 0 to {MAX_SEED}"),
        ({"seed": "three"}, "seed: must be a whole number (got 'three')"),
        ({"seed": True}, "seed: must be a whole number, not a boolean"),
        ({"seed": "3.5"}, "seed: must be a whole number"),
        ({"lr": "-0.1"}, "lr: must be greater than 0 (got '-0.1')"),
        ({"lr": "0"}, "lr: must be greater than 0"),
        ({"lr": "nan"}, "lr: must be a finite number"),
        ({"lr": "inf"}, "lr: must be a finite number"),
        ({"steps": "0"}, "steps: must be from 1 to 1000000000 (got '0')"),
        ({"hidden": "0"}, "hidden: must be from 1"),
        ({"threads": "0"}, "threads: must be from 1 to 4096"),
        ({"device": "gpu"}, "device: must be auto, cpu, cuda or cuda:N (got 'gpu')"),
        ({"deterministic": "maybe"}, "deterministic: must be true or false"),
        ({"metric": "loss,acc"}, "metric: must be 1-250 letters"),
        ({"sed": "3"}, "sed: unknown field; did you mean seed? (allowed: checkpoint_every, deterministic, device, fingerprint_every, hidden, job, "
                       "keep_checkpoints, lr, metric, resume_from, seed, steps, threads)"),
        ({"job": "cifar10"}, "job: this entry point runs 'linefit', the spec says 'cifar10'"),
    ],
)
def test_bad_values_give_one_line_naming_the_field_and_what_is_allowed(values: dict, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_spec(LineFitSpec, values)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text and "errors.pydantic.dev" not in text


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(SpecError, match=r"seed: .*; steps: "):
        build_spec(LineFitSpec, {"seed": "-1", "steps": "0"})


def test_a_spec_is_frozen() -> None:
    with pytest.raises(Exception):
        LineFitSpec().seed = 4  # type: ignore[misc]


@pytest.mark.parametrize("word", ["seed", "=3", ""])
def test_assignments_need_a_field_and_a_value(word: str) -> None:
    with pytest.raises(SpecError, match="expected field=value"):
        parse_assignments([word])


def test_spec_files_in_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("job: linefit\nseed: 5\nlr: 1.0e-3\n")
    (tmp_path / "b.json").write_text(json.dumps({"job": "linefit", "seed": 5, "lr": 0.001}))
    from_yaml = parse_spec(read_spec_file(tmp_path / "a.yaml"))
    from_json = parse_spec(read_spec_file(tmp_path / "b.json"))
    assert from_yaml == from_json and isinstance(from_yaml, LineFitSpec) and from_yaml.seed == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "spec file not found"),
        ("seed: [1\n", "is not valid YAML or JSON at line"),
        ("- 1\n- 2\n", "must hold a mapping of field: value, not list"),
        ("seed: 3\n", "job: missing"),
        # Every job whose spec class this process loaded is named: the tests load more than two.
        ("job: resnet\n", "job: must be one of cifar10, "),
        ("job: linefit\nsteps: -5\n", "invalid linefit spec: steps: must be from 1"),
        ("job: linefit\nseed: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests lists or mappings more than 20 deep"),
        ("job: linefit\n? [1, 2]\n: 3\n", "has a key that is a list, not a name (line 2)"),
    ],
)
def test_bad_spec_files_give_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "spec.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError) as caught:
        parse_spec(read_spec_file(path))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.e2e
def test_the_hash_is_stable_across_processes_and_follows_the_content() -> None:
    code = "from projects.linefit.spec import LineFitSpec; print(LineFitSpec(seed=3).hash)"
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == LineFitSpec(seed=3).hash
    assert LineFitSpec(seed=3).hash == build_spec(LineFitSpec, {"seed": "3", "lr": "1e-4"}).hash
    assert LineFitSpec(seed=3).hash != LineFitSpec(seed=4).hash
    assert LineFitSpec().hash != LineFitSpec(threads=2).hash


def test_fields_added_later_keep_the_hashes_of_runs_logged_before_them_at_their_defaults() -> None:
    before = {name: value for name, value in Cifar10Spec().model_dump(mode="json").items()
              if name not in ("nproc", "bucket_cap_mb")}  # a run logged before DDP came
    assert spec_hash(before) == Cifar10Spec().hash
    assert Cifar10Spec(nproc=2).hash != Cifar10Spec().hash
    assert Cifar10Spec(nproc=2, bucket_cap_mb=1).hash != Cifar10Spec(nproc=2).hash


def test_params_are_text_that_reads_back_to_the_same_spec() -> None:
    spec = LineFitSpec(seed=9, lr=3e-4, deterministic=False)
    params = spec.to_params()
    assert params["seed"] == "9" and params["deterministic"] == "false" and params["job"] == "linefit"
    assert build_spec(LineFitSpec, params) == spec


def test_how_a_run_is_carried_out_is_not_part_of_its_identity() -> None:
    plain = LineFitSpec()
    assert plain.hash == LineFitSpec(checkpoint_every=100, resume_from="0123abcd").hash
    with pytest.raises(SpecError, match="resume_from: must be an MLflow run id"):
        build_spec(LineFitSpec, {"resume_from": "../../etc"})
