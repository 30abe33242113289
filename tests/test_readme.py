"""The README is the front door: its Python API example runs as written, and its own-job example is the tested one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_command

README = (REPO / "README.md").read_text()


def code_block_after(heading: str) -> str:
    section = README.split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.e2e
def test_the_python_api_example_runs_as_written(tmp_path: Path, store: str) -> None:
    (tmp_path / "api.py").write_text(code_block_after("## Python API"))
    result = run_command([sys.executable, "api.py"], store, tmp_path, PYTHONHASHSEED="0")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[1:] == ["api.py"] or lines[0].endswith(" api.py")
    assert lines[1].startswith("200 [14210.21679688")  # the seed's first loss, as the line-fit job logs it
    assert lines[2:5] == ["True", "False 0 seed",
                          "most likely cause: seed (3 | 4): another seed draws other initial weights, dropout masks "
                          "and shuffle order"]
    assert lines[5] == "2"


def test_the_own_job_example_is_the_tested_project() -> None:
    shown = code_block_after("## Your own job")
    assert shown.strip() in (REPO / "examples" / "own_job" / "train.py").read_text()
