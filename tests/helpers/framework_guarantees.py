"""The guarantees a framework example gets, proven the same way for each (tests/test_lightning.py,
tests/test_transformers.py): its script started in processes of their own, killed and resumed,
repeated, bisected and checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlrepro.cli.main import main
from tests.conftest import (
    job_env,
    jobs_two_at_once,
    kill_after_checkpoints,
    run_command,
    run_here,
)
from tests.helpers.planting import planted_line


def script_runs(store: str, cwd: Path, script: Path, *words_of_each: list[str], **env: str) -> list[str]:
    """``script`` in a process a run, two at once; their run ids."""
    return jobs_two_at_once(store, cwd, [[sys.executable, str(script), *words] for words in words_of_each], **env)


def assert_resumes_and_repeats(store: str, cwd: Path, script: Path, words: list[str], steps: int) -> str:
    """SIGKILL after a checkpoint, then ``resume_from``: the whole run's ``steps`` losses, bit for bit;
    two fresh runs identical; another seed named as the cause. The whole run's id."""
    # First, while the killed job's run is the store's only one.
    job = subprocess.Popen([sys.executable, str(script), *words], cwd=cwd, env=job_env(store, PYTHONHASHSEED="0"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = kill_after_checkpoints(store, job, at_least=1)
    resumed, whole = script_runs(store, cwd, script, [*words, f"resume_from={killed}"], words)
    verdict = run_here(main, "compare", resumed, whole)
    same = f"logged the same {steps} losses, bit for bit"
    assert verdict.exit_code == 0 and same in verdict.stdout, verdict.stdout

    again, other_seed = script_runs(store, cwd, script, words, [*words, "seed=4"])
    assert same in run_here(main, "compare", whole, again).stdout
    different = json.loads(run_here(main, "compare", "--json", whole, other_seed).stdout)
    assert different["diagnosis"].startswith("most likely cause: seed (3 | 4)")
    return whole


def assert_bisect_names_the_planted_op(store: str, cwd: Path, planted: Path, words: list[str]) -> None:
    """Two runs of ``planted`` (noise from step 7, checkpoints every 5, all kept) part at step 7;
    bisect replays them from the framework's own checkpoint at step 5 and names the op and its line."""
    noisy = {"PLANT_NOISE_FROM": "7"}
    a, b = script_runs(store, cwd, planted, words, words, **noisy)
    bisected = run_command([sys.executable, "-m", "mlrepro", "bisect", "--json", a, b], store, cwd, **noisy)
    assert bisected.returncode == 1, bisected.stderr[-3000:]
    found = json.loads(bisected.stdout)
    assert (found["first_divergent_step"], found["checkpoint_step"]) == (7, 5)
    assert found["difference"]["phase"] == "op"
    assert found["difference"]["location"] == f"{planted}:{planted_line(planted)} in planted"


def assert_check_passes(store: str, cwd: Path, script: Path) -> None:
    """mlrepro check with gradient accumulation: fresh runs agree, a resume mid-epoch agrees, a broken one is caught."""
    checked = run_command([sys.executable, "-m", "mlrepro", "check", "--json", str(script), "accumulate=2",
                           "--steps", "12", "--resume-at", "5"], store, cwd)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]
    assert json.loads(checked.stdout)["passed"] is True
