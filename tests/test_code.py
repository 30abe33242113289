"""The code a run ran: its entry, its sources, git without untracked noise, and how to start it again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlrepro.capture.code import NO_CHANGES, UNAVAILABLE, git_facts
from mlrepro.cli.main import main
from tests.conftest import run_command, run_here


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)


def test_untracked_files_are_counted_apart_and_only_tracked_changes_make_a_run_dirty(tmp_path: Path) -> None:
    assert git_facts(tmp_path)["git_commit"] == UNAVAILABLE  # not a repository
    git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("print(1)\n")
    git(tmp_path, "add", "train.py")
    assert git_facts(tmp_path)["git_commit"] == UNAVAILABLE  # no commit yet
    git(tmp_path, "commit", "-q", "-m", "x")
    clean = git_facts(tmp_path)
    assert len(clean["git_commit"]) == 40
    assert (clean["git_dirty"], clean["git_diff_digest"], clean["git_untracked"]) == ("false", NO_CHANGES, "0")

    (tmp_path / "spec.yaml").write_text("job: linefit\n")
    untracked = git_facts(tmp_path)
    assert (untracked["git_dirty"], untracked["git_diff_digest"], untracked["git_untracked"]) == ("false", NO_CHANGES, "1")

    (tmp_path / "train.py").write_text("print(2)\n")
    edited = git_facts(tmp_path)
    assert edited["git_dirty"] == "true" and edited["git_diff_digest"] != NO_CHANGES
    (tmp_path / "train.py").write_text("print(3)\n")
    assert git_facts(tmp_path)["git_diff_digest"] != edited["git_diff_digest"]
    git(tmp_path, "checkout", "-q", "train.py")
    git(tmp_path, "add", "spec.yaml")  # staged, never committed: a change to the tracked files
    staged = git_facts(tmp_path)
    assert (staged["git_dirty"], staged["git_untracked"]) == ("true", "0") and staged["git_diff_digest"] != NO_CHANGES


SCRIPT = """
import json, sys
import helper  # a module of the project: one of the job's sources
from mlrepro.capture.code import capture_code
print(json.dumps(capture_code().model_dump(mode="json")))
"""


@pytest.mark.e2e
def test_a_script_is_named_relative_to_its_project_with_every_source_it_loaded(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "MLproject").write_text("name: p\n")
    (project / "helper.py").write_text("X = 1\n")
    (project / "jobs" / "fit.py").write_text(f"import sys; sys.path.insert(0, {str(project)!r})\n" + SCRIPT)
    result = subprocess.run([sys.executable, "jobs/fit.py", "seed=4"], cwd=project, capture_output=True, text=True,
                            check=True)
    code = json.loads(result.stdout)
    assert (code["entry_kind"], code["entry"], code["project_dir"]) == ("script", "jobs/fit.py", str(project))
    assert code["args"] == ["seed=4"] and code["working_dir"] == str(project)
    assert sorted(code["sources"]) == ["helper.py", "jobs/fit.py"]  # mlrepro, torch and pydantic are libraries


SAME_SPEC = """
from mlrepro import start_run
from projects.linefit.spec import LineFitSpec

with start_run(LineFitSpec(seed=3, steps=5)) as run:
    for step in range(5):
        run.log_loss(1.0 / (step + 1))
print(run.run_id)
"""


@pytest.mark.e2e
def test_the_same_spec_from_two_scripts_is_two_jobs_and_compare_names_the_code_first(
    tmp_path: Path, store: str
) -> None:
    ids = []
    for name in ("first.py", "second.py"):
        (tmp_path / name).write_text(SAME_SPEC)
        result = run_command([sys.executable, name], store, tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        ids.append(result.stdout.split()[-1])
    # The losses are the same numbers, yet the runs are not the same job.
    verdict = json.loads(run_here(main, "compare", "--json", *ids).stdout)
    assert verdict["identical"] is True
    assert [(d["key"], d["value_a"], d["value_b"]) for d in verdict["differences"]][0] == (
        "code.entry", "first.py", "second.py")
    table = run_here(main, "find", "--job", "linefit", "seed=3", "steps=5").stdout
    assert "linefit (first.py)" in table and "linefit (second.py)" in table
