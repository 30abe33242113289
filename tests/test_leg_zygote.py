"""The legs' zygote: a check's or a bisect's leg forked from a process that imported torch and MLflow
once is the same job, recorded the same, as the leg started as a new process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlrepro.analysis.compare import compare_logged_runs
from mlrepro.store import record
from mlrepro.training.leg_zygote import servable
from mlrepro.training.orders import Leg, LegReport, Orders, Scratch, job_command
from tests.conftest import REPO

ENV = {"PATH": "/usr/bin", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "2", "PYTHONPATH": "/project"}


def test_a_module_or_a_script_in_the_zygotes_own_environment_is_forked() -> None:
    leg_env = dict(ENV, MLFLOW_TRACKING_URI="sqlite:///x.db", MLREPRO_ORDERS="o.json", MLREPRO_SPOOL_DIR="/s")
    assert servable([sys.executable, "-m", "projects.linefit", "steps=3"], leg_env, ENV)
    assert servable([sys.executable, "train.py", "--batch-size", "8"], leg_env, ENV)
    # A replay's module: the folder it starts in kept off sys.path (-P), as the zygote's child does too.
    assert servable([sys.executable, "-P", "-m", "projects.linefit", "--spec", "s.json"], leg_env, ENV)


@pytest.mark.parametrize("argv", [["/other/python", "-m", "jobs"], [sys.executable, "-c", "print(1)"],
                                  [sys.executable, "-m"], [sys.executable, "-X", "dev", "train.py"], [sys.executable],
                                  [sys.executable, "-P"], [sys.executable, "-P", "-X", "dev", "train.py"]])
def test_another_interpreter_or_an_interpreter_option_starts_a_process_of_its_own(argv: list[str]) -> None:
    assert not servable(argv, ENV, ENV)


@pytest.mark.parametrize("changed", [{"PYTHONHASHSEED": "7"}, {"OMP_NUM_THREADS": "1"}, {"CUDA_VISIBLE_DEVICES": "1"},
                                     {"PYTHONPATH": "/another/checkout"}])
def test_a_variable_read_as_an_interpreter_or_torch_starts_is_never_forked_across(changed: dict[str, str]) -> None:
    # The hash seed is fixed when the interpreter starts; OpenMP reads its threads as torch loads; the
    # path decides which mlrepro the zygote imported.
    assert not servable([sys.executable, "-m", "jobs"], dict(ENV, **changed), ENV)


@pytest.mark.e2e
def test_a_forked_leg_is_the_job_a_new_process_would_have_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    scratch = Scratch()
    try:
        job, words = job_command("projects.linefit"), ["steps=6", "fingerprint_every=1"]
        forked = scratch.run(job, Leg("forked", words, Orders()))
        assert scratch._zygote is not None  # the leg went through the zygote

        # The same leg, started as a new process in the environment the scratch gave the forked one.
        orders = tmp_path / "new.orders.json"
        orders.write_text(Orders(report=str(tmp_path / "new.report.json")).model_dump_json())
        env = dict(scratch._zygote.env, MLFLOW_TRACKING_URI=scratch.uri, MLREPRO_SPOOL_DIR=str(scratch.spool),
                   MLREPRO_ORDERS=str(orders))
        subprocess.run([*job.argv, *words], cwd=job.cwd, env=env, check=True, capture_output=True)
        fresh = LegReport.model_validate_json((tmp_path / "new.report.json").read_text())

        client = scratch.client()
        a, b = record.read_run(client, forked.run_id), record.read_run(client, fresh.run_id)
        assert compare_logged_runs(a, b).verdict == "identical"
        assert a.losses.values.tobytes() == b.losses.values.tobytes()
        # What the run says ran: the module, its words, the project and the files it loaded.
        assert a.code is not None and b.code is not None
        assert (a.code.entry_kind, a.code.entry, a.code.args) == ("module", "projects.linefit", words)
        assert a.code == b.code
        assert a.environment == b.environment
    finally:
        scratch.close()
