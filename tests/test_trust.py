"""A record names the code a replay runs, and anyone who can log a run can write it: reproduce and
bisect run nothing a record names unless it fits the code on disk, and show what would have run."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import mlflow
import pytest

from mlrepro.capture.code import CodeRecord
from mlrepro.cli.main import main
from mlrepro.replay.trust import misfit
from mlrepro.store import keys
from tests.conftest import (
    REPO,
    LineFitRuns,
    assert_one_line_error_here,
    run_command,
    run_here,
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A job's folder: a script, a package run with -m, and an MLproject."""
    folder = tmp_path / "project"
    (folder / "jobs" / "fit").mkdir(parents=True)
    (folder / "train.py").write_text("print('training')\n")
    (folder / "jobs" / "__init__.py").write_text("")
    (folder / "jobs" / "fit" / "__init__.py").write_text("")
    (folder / "jobs" / "fit" / "__main__.py").write_text("print('fit')\n")
    (folder / "MLproject").write_text("name: p\nentry_points:\n  main:\n    command: python train.py\n")
    return folder


def record(folder: Path, entry: str = "train.py", kind: str = "script", **fields: object) -> CodeRecord:
    sources = {path: digest(folder / path) for path in ("train.py", "jobs/fit/__main__.py")}
    return CodeRecord.model_validate({"entry": entry, "entry_kind": kind, "project_dir": str(folder),
                                      "sources": sources, **fields})


def test_a_record_that_names_its_own_code_in_its_own_folder_fits(project: Path) -> None:
    assert misfit(record(project), project, recorded_folder=True, mlproject_entry=None) is None
    assert misfit(record(project, "jobs.fit", "module"), project, True, "main") is None


@pytest.mark.parametrize(("code", "fragment"), [
    (lambda folder: record(folder, "timeit", "module"), "its entry module 'timeit' is not in the project folder"),
    (lambda folder: record(folder, "../outside.py"), "its entry script '../outside.py' is not in the project folder"),
    (lambda folder: record(folder, "/usr/lib/python3/dist-packages/x.py"), "is not in the project folder"),
    (lambda folder: record(folder, "jobs.fit;rm", "module"), "is not in the project folder"),
    (lambda folder: record(folder, "-c", "command"), "its entry command '-c' is not in the project folder"),
    (lambda folder: record(folder).model_copy(update={"sources": {"../../etc/passwd": "0" * 16}}),
     "its sources name '../../etc/passwd', outside the project folder"),
    (lambda folder: record(folder).model_copy(update={"sources": {"jobs/fit/__main__.py": "0" * 16}}),
     "it holds no digest of its entry train.py"),
])
def test_a_record_naming_code_it_does_not_hold_is_refused(project: Path, code, fragment: str) -> None:
    assert fragment in misfit(code(project), project, recorded_folder=False, mlproject_entry=None)


def test_the_recorded_folder_runs_only_while_it_holds_the_code_that_ran(project: Path) -> None:
    logged = record(project)
    (project / "train.py").write_text("print('changed since')\n")
    why = misfit(logged, project, recorded_folder=True, mlproject_entry=None)
    assert why is not None and f"the code in {project} is not the code it ran" in why and "train.py differ" in why
    # A folder the user names (--project) is theirs to vouch for: another checkout of the job.
    assert misfit(logged, project, recorded_folder=False, mlproject_entry=None) is None


def test_an_mlproject_entry_point_must_be_declared_there(project: Path) -> None:
    assert "entry point 'evil' is not declared" in misfit(record(project), project, True, "evil")


def forge_code(run_id: str, code: dict) -> None:
    """Replace a logged run's code record in this test's copy of the store, as anyone who can log to the
    store can. Written in the run's artifact folder: MLflow caches a run's artifact repository by run id,
    and the session's runs share their ids with every copy."""
    artifacts = Path(mlflow.MlflowClient().get_run(run_id).info.artifact_uri)
    (artifacts / keys.CODE_ARTIFACT).write_text(json.dumps(code))


def payload(tmp_path: Path, marker: Path) -> dict:
    """A record naming the standard library's timeit, whose setup is Python that writes ``marker``."""
    return {"entry": "timeit", "entry_kind": "module", "project_dir": str(tmp_path), "working_dir": str(tmp_path),
            "args": ["-n", "1", "-s", f"open({str(marker)!r}, 'w').write('ran')", "pass"], "sources": {}}


def test_reproduce_and_bisect_run_nothing_a_forged_record_names(linefit_store: LineFitRuns, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for run_id in (linefit_store.same_a, linefit_store.other_seed):
        forge_code(run_id, payload(tmp_path, marker))
    runs_before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))

    refused = run_here(main, "reproduce", linefit_store.same_a)
    assert_one_line_error_here(refused, f"run {linefit_store.same_a}'s record does not fit the code on disk: its entry "
                                        "module 'timeit' is not in the project folder", "nothing was run",
                               f"It would run: {sys.executable} -P -m timeit -n 1 -s", "--trust-record")
    refused = run_here(main, "bisect", linefit_store.same_a, linefit_store.other_seed)
    assert_one_line_error_here(refused, "record does not fit the code on disk", "It would run:")
    assert not marker.exists()
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == runs_before


@pytest.mark.e2e
def test_trust_record_shows_the_command_then_runs_it(linefit_store: LineFitRuns, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    forge_code(linefit_store.same_a, payload(tmp_path, marker))
    result = run_command([sys.executable, "-m", "mlrepro", "reproduce", "--trust-record", linefit_store.same_a],
                         mlflow.get_tracking_uri(), REPO)
    assert f"mlrepro: runs {sys.executable} -P -m timeit -n 1 -s" in result.stderr
    assert marker.read_text() == "ran"  # what the user was shown and let run
    assert result.returncode == 2  # timeit is no mlrepro job: the repeat logged nothing
