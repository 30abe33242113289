"""Property-based: whatever a user or a damaged file hands mlrepro, the answer is a correct value or one
clear line, never a traceback. Fixed seed and bounded examples (the `ci` profile in conftest.py)."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mlrepro.analysis.compare import compare_losses
from mlrepro.capture.code import CodeRecord
from mlrepro.capture.losses import LossSeries
from mlrepro.capture.spec import (
    MAX_SPEC_DEPTH,
    build_spec,
    parse_spec,
    read_spec_file,
)
from mlrepro.errors import MAX_MESSAGE, DamagedRecordError, MlreproError, SpecError
from mlrepro.store import keys
from mlrepro.store.delivery import _checked_entry
from mlrepro.store.json_records import (
    damage_named,
    read_environment,
    read_model,
    read_seeding,
    read_spec,
)
from mlrepro.store.loss_record import read_loss_record
from mlrepro.store.record import read_run
from mlrepro.store.resume_links import resumed_at_step
from mlrepro.store.spool import REPLAYED, SpoolError
from projects.cifar10.spec import Cifar10Spec
from projects.linefit.spec import LineFitSpec

FIELDS = sorted(set(LineFitSpec.model_fields) | set(Cifar10Spec.model_fields) | {"sed", "", "x" * 300})
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=300), st.binary(max_size=50).map(lambda b: b.decode("latin-1")),
    st.lists(st.integers(), max_size=5), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def assert_one_line(err: SpecError) -> None:
    text = str(err)
    assert text and "\n" not in text and len(text) <= MAX_MESSAGE + 200, text[:300]


@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8))
def test_any_spec_values_give_a_spec_or_one_line(values: dict) -> None:
    for spec_type in (LineFitSpec, Cifar10Spec):
        try:
            spec = build_spec(spec_type, values)
        except SpecError as err:
            assert_one_line(err)
        else:
            assert spec.job == spec_type.job_name() and len(spec.hash) == 16


def read_or_one_line(reader: Callable[[Path], Any], folder: Path, name: str, data: bytes) -> Any:
    """What ``reader`` makes of ``data`` written to a file, or None after checking its error is one line."""
    path = folder / name
    path.write_bytes(data)
    try:
        return reader(path)
    except MlreproError as err:  # SpecError for a spec, DamagedRecordError for a record
        assert_one_line(err)
        return None


@given(st.binary(max_size=2000))
def test_any_bytes_as_a_spec_file_give_a_mapping_or_one_line(tmp_path_factory, data: bytes) -> None:
    values = read_or_one_line(read_spec_file, tmp_path_factory.mktemp("spec"), "spec.yaml", data)
    if values is not None:
        assert isinstance(values, dict)
        try:
            parse_spec(values)
        except SpecError as err:
            assert_one_line(err)


@given(st.text(alphabet="&*[]{}:,- \nabjoblinefit0123", max_size=400))
def test_yaml_shaped_text_with_anchors_and_aliases_is_bounded(tmp_path_factory, text: str) -> None:
    read_or_one_line(read_spec_file, tmp_path_factory.mktemp("yaml"), "spec.yaml", text.encode())


@given(st.binary(max_size=3000))
def test_any_bytes_as_the_loss_record_give_losses_or_one_line(tmp_path_factory, data: bytes) -> None:
    losses = read_or_one_line(read_loss_record, tmp_path_factory.mktemp("losses"), "losses.npz", data)
    if losses is not None:
        assert len(losses.steps) == len(losses.values)


def floats_with_every_bit_pattern() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=False), st.just(-0.0), st.just(math.inf),
                     st.integers(min_value=1, max_value=2**51 - 1).map(
                         lambda payload: struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000000 | payload))[0]))


@given(st.lists(floats_with_every_bit_pattern(), max_size=40), st.lists(floats_with_every_bit_pattern(), max_size=40))
def test_compare_is_identical_exactly_when_every_bit_is_equal_and_does_not_care_about_order(a: list, b: list) -> None:
    first, second = LossSeries.from_steps_and_values(range(len(a)), a), LossSeries.from_steps_and_values(range(len(b)), b)
    verdict = compare_losses(first, second)
    same_bits = len(a) == len(b) > 0 and np.array(a, dtype=np.float64).tobytes() == np.array(b, dtype=np.float64).tobytes()
    assert verdict.identical == same_bits
    swapped = compare_losses(second, first)
    assert (swapped.identical, swapped.first_divergent_step, swapped.divergent_steps) == (
        verdict.identical, verdict.first_divergent_step, verdict.divergent_steps)
    assert compare_losses(first, first).identical == (len(a) > 0)


# --- Records read back: anyone who can log a run can write them (issue 22) ---

LOSS_RECORD_NAMES = ("steps", "values", "fingerprint_steps", "fingerprints", "fingerprint_names", "fingerprint_kinds",
                     "module_order")


@st.composite
def record_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Arrays under the record's own names, of any kind and shape: near misses of a real record."""
    arrays = {}
    for name in draw(st.lists(st.sampled_from(LOSS_RECORD_NAMES), unique=True, max_size=len(LOSS_RECORD_NAMES))):
        kind = draw(st.sampled_from(("int", "float", "text", "bool")))
        shape = draw(st.sampled_from(((), (0,), (1,), (3,), (4,), (3, 2), (2, 3))))
        size = int(np.prod(shape))
        if kind == "text":
            cells = draw(st.lists(st.sampled_from(["parameter", "gradient", "w", "", "weights"]), min_size=size, max_size=size))
            arrays[name] = np.array(cells, dtype="<U12").reshape(shape)
        elif kind == "bool":
            arrays[name] = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool).reshape(shape)
        else:
            cells = draw(st.lists(st.integers(min_value=-2, max_value=6), min_size=size, max_size=size))
            arrays[name] = np.array(cells, dtype=np.int64 if kind == "int" else np.float64).reshape(shape)
    return arrays


@st.composite
def real_records(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A record as a run writes it: steps from 0, a float a step, a fingerprint a step and a tensor."""
    steps = draw(st.integers(min_value=0, max_value=5))
    tensors = draw(st.integers(min_value=0, max_value=3))
    arrays = {"steps": np.arange(steps, dtype=np.int64), "values": np.linspace(1.0, 0.0, steps)}
    if tensors:
        arrays |= {"fingerprint_steps": np.arange(steps, dtype=np.int64),
                   "fingerprints": np.ones((steps, tensors), dtype=np.int64),
                   "fingerprint_names": np.array([f"t{i}" for i in range(tensors)]),
                   "fingerprint_kinds": np.array(["parameter"] * tensors), "module_order": np.array(["m"])}
    return arrays


LOSS_RECORDS = st.one_of(
    real_records(),
    st.tuples(real_records(), record_arrays()).map(lambda pair: {**pair[0], **pair[1]}),  # some arrays replaced
    record_arrays(),
)


@given(LOSS_RECORDS)
def test_any_arrays_as_the_loss_record_give_one_record_or_one_line(tmp_path_factory, arrays: dict) -> None:
    path = tmp_path_factory.mktemp("npz") / "losses.npz"
    with path.open("wb") as file:
        np.savez(file, **arrays)
    try:
        losses, fingerprints = read_loss_record(path)
    except DamagedRecordError as err:
        assert_one_line(err)
        return
    steps = losses.steps
    assert steps.dtype.kind == "i" and len(steps) == len(losses.values) and losses.values.dtype.kind == "f"
    assert (np.diff(steps) > 0).all() and (len(steps) == 0 or steps[0] >= 0)  # "identical" needs one step per step
    if fingerprints is not None:
        assert fingerprints.values.shape == (len(fingerprints.steps), len(fingerprints.names))
        assert len(fingerprints.kinds) == len(fingerprints.names)
        assert (np.diff(fingerprints.steps) > 0).all()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**40), max_value=2**40) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def near_misses(real: dict) -> st.SearchStrategy[Any]:
    """A real record with one value replaced, one key dropped, or anything else JSON can hold."""
    keys = sorted(real)
    replaced = st.tuples(st.sampled_from(keys), JSON).map(lambda change: {**real, change[0]: change[1]})
    dropped = st.sampled_from(keys).map(lambda key: {name: value for name, value in real.items() if name != key})
    return st.one_of(replaced, dropped, JSON)


REAL_SPEC = LineFitSpec(steps=5).model_dump(mode="json")
REAL_SEEDING = {"seed": 3, "deterministic_requested": True, "cuda_initialized_before_cublas_config": False,
                "state": {"deterministic_algorithms": True, "deterministic_warn_only": False, "cudnn_deterministic": True,
                          "cudnn_benchmark": False, "cudnn_allow_tf32": False, "cuda_matmul_allow_tf32": False,
                          "float32_matmul_precision": "highest", "intra_op_threads": 1, "interop_threads": 1,
                          "cublas_workspace_config": None, "hash_randomization": False, "python_hash_seed": "0"}}
REAL_ENVIRONMENT = {"torch.version": "2.14.1", "determinism.intra_op_threads": "1"}
REAL_CODE = {"entry_kind": "module", "entry": "projects.linefit", "args": ["steps=5"], "project_dir": "/project",
             "sources": {"projects/linefit/train.py": "0" * 16}, "git_commit": "abc"}


def read_or_damaged(read: Callable[[], Any]) -> Any:
    """What ``read`` gives, or None once its DamagedRecordError is checked to be one line naming the run."""
    try:
        with damage_named("0" * 32):
            return read()
    except DamagedRecordError as err:
        assert_one_line(err)
        assert str(err).startswith(f"run {'0' * 32}: ")
        return None


@given(near_misses(REAL_SPEC), near_misses(REAL_SEEDING), near_misses(REAL_ENVIRONMENT), near_misses(REAL_CODE))
def test_any_json_records_give_checked_values_or_one_line_naming_the_run(
    tmp_path_factory, spec: Any, seeding: Any, environment: Any, code: Any,
) -> None:
    folder = tmp_path_factory.mktemp("json")
    files = {}
    for artifact, content in ((keys.SPEC_ARTIFACT, spec), (keys.SEED_ARTIFACT, seeding),
                              (keys.ENVIRONMENT_ARTIFACT, environment), (keys.CODE_ARTIFACT, code)):
        files[artifact] = folder / Path(artifact).name
        files[artifact].write_text(json.dumps(content))
    read = read_or_damaged(lambda: read_spec(files, {}))
    if read is not None:
        assert isinstance(read.model_dump()["seed"], int) and read.job
        seeded = read_or_damaged(lambda: read_seeding(files, read))
        assert seeded is None or seeded.seed == read.model_dump()["seed"]
    facts = read_or_damaged(lambda: read_environment(files))
    assert facts is None or all(isinstance(key, str) and isinstance(value, str) for key, value in facts.items())
    record = read_or_damaged(lambda: read_model(files, keys.CODE_ARTIFACT, CodeRecord))
    assert record is None or isinstance(record, CodeRecord)


@given(st.text(max_size=30))
def test_any_resumed_at_step_tag_is_a_step_or_one_line(text: str) -> None:
    try:
        step = resumed_at_step("0" * 32, {keys.TAG_RESUMED_AT_STEP: text}, LossSeries.from_steps_and_values([], []))
    except DamagedRecordError as err:
        assert_one_line(err)
    else:
        assert text.isdigit() and step == int(text)


@st.composite
def journal_lines(draw: st.DrawFn) -> Any:
    """Lines a spool could hold: its own methods and others, with any arguments, paths inside and outside it."""
    paths = st.sampled_from(["files/000001/losses.npz", "files/000002/x.pt", "/etc/passwd", "../outside/secret.txt",
                             "files/../../outside/secret.txt", "files/000001/../../../outside/x", "run.json",
                             "files/x", ""])
    argument = st.one_of(paths, JSON, st.just(RUN_IN_LINE))
    return draw(st.one_of(
        JSON,
        st.fixed_dictionaries({
            "method": st.sampled_from([*sorted(REPLAYED), "delete_run", "log_batch", "__class__"]) | st.text(max_size=8),
            "args": st.lists(argument, max_size=4),
            "kwargs": st.dictionaries(st.sampled_from(["artifact_path", "status", "end_time", "step", "timestamp",
                                                       "run_id"]), st.one_of(argument, st.integers()), max_size=3),
        }),
    ))


RUN_IN_LINE = "f" * 32


@st.composite
def real_lines(draw: st.DrawFn) -> dict[str, Any]:
    """A journal line as the spool writes it."""
    return draw(st.sampled_from([
        {"method": "set_tag", "args": [RUN_IN_LINE, "mlrepro.ended", "KILLED by SIGTERM"], "kwargs": {}},
        {"method": "log_metric", "args": [RUN_IN_LINE, "loss", "0.5"], "kwargs": {"timestamp": 1, "step": 0}},
        {"method": "log_artifact", "args": [RUN_IN_LINE, "files/000001/losses.npz"], "kwargs": {"artifact_path": "mlrepro"}},
        {"method": "delete_checkpoint", "args": [RUN_IN_LINE, 20], "kwargs": {}},
        {"method": "set_terminated", "args": [RUN_IN_LINE], "kwargs": {"status": "FINISHED", "end_time": 2}},
    ]))


def one_part_changed(line: dict[str, Any], part: str, value: Any) -> dict[str, Any]:
    changed = {**line, part: value}
    if part == "args" and isinstance(value, list):
        changed["args"] = line["args"][:1] + value  # the run id kept, the arguments others
    return changed


@given(st.one_of(
    real_lines(),
    st.tuples(real_lines(), st.sampled_from(["method", "args", "kwargs"]), journal_lines()).map(
        lambda drawn: one_part_changed(drawn[0], drawn[1], drawn[2].get(drawn[1]) if isinstance(drawn[2], dict) else drawn[2])),
    journal_lines(),
))
def test_any_journal_line_acts_only_on_the_spools_own_run_and_files_or_stops_in_one_line(
    tmp_path_factory, line: Any,
) -> None:
    folder = tmp_path_factory.mktemp("spool")
    (folder / "files" / "000001").mkdir(parents=True)
    (folder / "files" / "000001" / "losses.npz").write_bytes(b"x")
    try:
        method, args, kwargs = _checked_entry(line, folder)
    except SpoolError as err:
        assert_one_line(err)
        return
    assert method in REPLAYED
    # The run a line names (its first argument) is never passed on: run.json says whose the spool is.
    assert args == ([] if method == "set_terminated" else line["args"][1:])
    if method == "log_artifact":
        assert (folder / args[0]).resolve().parent.parent == (folder / "files").resolve()  # as delivery reads it
        assert kwargs["artifact_path"] is None or ".." not in kwargs["artifact_path"].split("/")


CHAIN_RUNS = 5


@pytest.fixture(scope="module")
def chain_store(tmp_path_factory) -> tuple[MlflowClient, list[str]]:
    """Runs that each logged three losses, in a store of their own: the tests tie them in chains."""
    client = MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('chains') / 'mlflow.db'}")
    runs = []
    for index in range(CHAIN_RUNS):
        run_id = client.create_run("0").info.run_id
        for step in range(3):
            client.log_metric(run_id, "loss", index + step / 10, step=step)
        runs.append(run_id)
    return client, runs


@settings(max_examples=40)
@given(st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=CHAIN_RUNS - 1)),
                min_size=CHAIN_RUNS, max_size=CHAIN_RUNS))
def test_any_resume_chain_reads_whole_or_ends_in_one_line_with_cycles_named(chain_store, resumed_from: list) -> None:
    client, runs = chain_store
    for run_id, previous in zip(runs, resumed_from):
        if previous is not None:
            client.set_tag(run_id, keys.TAG_RESUMED_FROM, runs[previous])
            client.set_tag(run_id, keys.TAG_RESUMED_AT_STEP, "1")
        elif keys.TAG_RESUMED_FROM in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, keys.TAG_RESUMED_FROM)
    seen, current = [], 0
    while current is not None and current not in seen:
        seen.append(current)
        current = resumed_from[current]
    cycle = current is not None
    try:
        logged = read_run(client, runs[0])
    except MlreproError as err:
        assert_one_line(err)
        assert cycle and isinstance(err, DamagedRecordError) and "cycle" in str(err)
        return
    assert not cycle
    # Every run resumes at step 1: step 0 is the first run's of the chain, steps 1 and 2 the run's own.
    assert logged.losses.steps.tolist() == [0, 1, 2]
    assert logged.losses.values.tolist() == [seen[-1] + 0.0, 0.1, 0.2]


@given(st.lists(st.sampled_from(["[", "{a: ", "- "]), min_size=1, max_size=60), st.sampled_from(["yaml", "json"]))
def test_a_spec_nested_any_depth_gives_a_mapping_or_one_line(tmp_path_factory, openers: list, form: str) -> None:
    """Brackets in a row past Python's recursion limit, in YAML flow, block or JSON form: bounded before use."""
    if form == "json":
        openers = [opener for opener in openers if opener != "- "] or ["["]
        text = '{"job": "linefit", "x": ' + "".join('{"a": ' if o == "{a: " else "[" for o in openers) + "1" + \
            "".join("}" if o == "{a: " else "]" for o in reversed(openers)) + "}"
    else:
        body, indent = "", "  "
        for depth, opener in enumerate(openers):
            body += ("\n" + indent * (depth + 1) + "- ") if opener == "- " else opener
        closers = "".join("}" if o == "{a: " else "]" if o == "[" else "" for o in reversed(openers))
        text = f"job: linefit\nx: {body}1{closers}\n"
    values = read_or_one_line(read_spec_file, tmp_path_factory.mktemp("deep"), f"spec.{form}", text.encode())
    depth = len(openers) + 2  # the top mapping, every opener, the value inside
    if form == "json":  # always well formed: read exactly when within the bound
        assert (values is not None) == (depth <= MAX_SPEC_DEPTH)
    if values is not None:  # YAML mixing block lists into flow ones may not parse: one line too
        assert isinstance(values, dict) and depth <= MAX_SPEC_DEPTH
