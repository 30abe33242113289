"""Run a logged run's spec again as a new run, and say whether it repeated bit for bit.

The job starts the way the run recorded (``mlrepro.capture.code``): through its MLproject
entry point with the same parameters, or as the same module or script, from the
run's own project folder (or the one given). A job that uses mlrepro's command
line is handed the logged spec as a file; any other is given its words again.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlrepro.analysis.compare import RunComparison, compare_logged_runs
from mlrepro.analysis.diagnosis import Difference, differences
from mlrepro.capture.code import CodeRecord, facts_now
from mlrepro.capture.datasets import DatasetRecord, digests_now
from mlrepro.capture.facts import fact_of
from mlrepro.capture.logged import LoggedRun
from mlrepro.errors import ReproductionError
from mlrepro.replay.trust import Launch, refuse_unless_fits
from mlrepro.review.verdicts import record_comparison
from mlrepro.store import keys, opening, record
from mlrepro.store.record import MLFLOW_ENTRY_POINT_TAG

_UNSET = ("unset", "unavailable")


@dataclass(frozen=True)
class Reproduction:
    original: LoggedRun
    new_run_id: str
    drift: list[Difference]  # what differed before the job ran: code, data, versions, hardware
    comparison: RunComparison


def environment_drift(logged: dict[str, str], current: dict[str, str]) -> list[Difference]:
    """Code, version and hardware facts that differ now from when the run was logged."""
    def comparable(facts: dict[str, str]) -> dict[str, str]:
        # Facts a new process can be checked against before it runs (declared with drift=True); the
        # determinism switches are only set once the job seeds, so they are left to compare.
        return {key: value for key, value in facts.items() if fact_of(key).drift}

    return differences({}, {}, comparable(logged), comparable(current))


def data_drift(datasets: dict[str, DatasetRecord]) -> list[Difference]:
    """The datasets read from disk whose content differs now from what the run recorded (or that are gone)."""
    now = digests_now(datasets)
    return differences({}, {}, {}, {}, None, {datasets[key].fact: datasets[key].digest for key in now},
                       {datasets[key].fact: digest for key, digest in now.items()})


def reproduce_run(
    run_id: str,
    project: str | Path | None = None,
    client: MlflowClient | None = None,
    on_drift: Callable[[list[Difference]], None] | None = None,
    on_command: Callable[[Launch], None] | None = None,
    trust_record: bool = False,
) -> Reproduction:
    """Repeat ``run_id`` in a new run of the same experiment, compare and record the verdict on both.

    ``project`` is the folder to start the job in; by default the run's own project
    folder. ``on_drift`` hears, before the job starts, what differs in code, versions
    or hardware from when the run was logged; ``on_command``, the command about to run. A record that
    does not fit the code on disk (``mlrepro.replay.trust``) runs nothing unless ``trust_record``.
    """
    # torch (through the collectors) only when a run is repeated
    from mlrepro.capture.environment import (
        capture_environment,  # torch: only when a run is repeated
    )

    client = client or opening.existing_store()
    original = record.read_run(client, run_id)
    if original.spec is None:
        raise ReproductionError(f"run {original.run_id} was not logged by an mlrepro job: it has no spec to repeat")
    code = original.code
    folder = _project_folder(original, project)
    started_in = _started_in(original, project, folder)
    # Checked before anything runs or a run is made: a refused record leaves nothing behind.
    planned, planned_cwd = _restart_command(code, folder, started_in, Path("SPEC.json"), "NEW_RUN_ID",
                                            original.experiment_id or "0")
    refuse_unless_fits(original.run_id, code, folder, project is None,  # type: ignore[arg-type]
                       code.mlproject_entry_point if _uses_mlproject(code, folder) else None,  # type: ignore[union-attr]
                       Launch(planned, planned_cwd), trust_record)
    current = capture_environment(extra=facts_now(code, folder) if code else None).facts
    drift = environment_drift(original.environment, current) + data_drift(original.datasets)
    if on_drift is not None and drift:
        on_drift(drift)

    tags = {keys.TAG_REPRODUCES: original.run_id}
    if _uses_mlproject(code, folder):  # as `mlflow run` tags the runs it creates, so a repeat repeats the same way
        tags[MLFLOW_ENTRY_POINT_TAG] = code.mlproject_entry_point  # type: ignore[union-attr]
    new_run_id = record.create_run(client, original.experiment_id or "0", tags)
    _run_repeat(client, original, folder, started_in, new_run_id, on_command)
    repeat = record.read_run(client, new_run_id)
    comparison = compare_logged_runs(original, repeat)
    record_comparison(comparison, original, repeat, client)
    return Reproduction(original=original, new_run_id=new_run_id, drift=drift, comparison=comparison)


def _run_repeat(client: MlflowClient, original: LoggedRun, folder: Path, started_in: Path, new_run_id: str,
                on_command: Callable[[Launch], None] | None) -> None:
    """Start the job again as run ``new_run_id`` and wait for it; a job that fails ends that run FAILED."""
    with tempfile.TemporaryDirectory() as temporary:
        spec_file = Path(temporary) / "spec.json"
        spec_file.write_text(json.dumps(original.spec.model_dump(mode="json")))  # type: ignore[union-attr]
        command, cwd = _restart_command(original.code, folder, started_in, spec_file, new_run_id,
                                        original.experiment_id or "0")
        if on_command is not None:
            on_command(Launch(command, cwd))
        env = dict(os.environ, MLFLOW_RUN_ID=new_run_id, MLFLOW_TRACKING_URI=client.tracking_uri,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
        # String hashing as the original process had it: fixed where it was fixed, random where it was not.
        hash_seed = hash_seed_of(original)
        if hash_seed is None:
            env.pop("PYTHONHASHSEED", None)
        else:
            env["PYTHONHASHSEED"] = hash_seed
        try:
            job = subprocess.run(command, cwd=cwd, env=env, check=False)
        except OSError as err:
            record.end_run(client, new_run_id, "FAILED")
            raise ReproductionError(f"cannot start the repeat of run {original.run_id}: {err}") from err
    if job.returncode != 0:
        record.end_run(client, new_run_id, "FAILED")
        raise ReproductionError(f"the repeat of run {original.run_id} failed (exit {job.returncode}); see run {new_run_id}")


def _uses_mlproject(code: CodeRecord | None, folder: Path) -> bool:
    return code is not None and bool(code.mlproject_entry_point) and (folder / "MLproject").exists()


def _unquoted(value: str) -> str:
    """A parameter as the user gave it: ``mlflow run`` logs each one shell-quoted (``''`` for empty)."""
    try:
        words = shlex.split(value)
    except ValueError:
        return value
    return "" if not words else words[0] if len(words) == 1 else value


def _restart_command(
    code: CodeRecord | None, folder: Path, working_dir: Path, spec_file: Path, run_id: str, experiment_id: str,
    through_mlproject: bool = True,
) -> tuple[list[str], Path]:
    """The command that starts the job again, and the folder to start it in; ``through_mlproject=False``
    starts the module or script itself, as ``mlflow run`` did, without a launcher's run."""
    if code is None:  # logged before mlrepro 0.2 recorded the code: nothing says what to start
        raise ReproductionError("the run was logged before mlrepro recorded the code that ran (mlrepro 0.2): "
                                "start its job yourself with the spec in mlrepro/spec.json")
    if through_mlproject and _uses_mlproject(code, folder):
        command = [sys.executable, "-m", "mlflow", "run", str(folder), "-e", code.mlproject_entry_point,
                   "--env-manager", "local", "--run-id", run_id, "--experiment-id", experiment_id]
        for name, value in code.mlproject_parameters.items():
            command += ["-P", f"{name}={_unquoted(value)}"]
        return command, folder
    words = ["--spec", str(spec_file)] if code.takes_spec_file else list(code.args)
    if code.entry_kind == "module":
        # -P: `python -m` would put the folder it starts in, which the record names, first on sys.path,
        # where a planted package could stand in for the checked entry or any module it imports. The
        # entry is found on PYTHONPATH instead: the project folder, whose code the record fits.
        return [sys.executable, "-P", "-m", code.entry, *words], working_dir
    if code.entry_kind == "script":
        script = folder / code.entry
        if not script.is_file():
            raise ReproductionError(f"the job's script {code.entry} is not in {folder}: pass --project DIR")
        return [sys.executable, str(script), *words], working_dir
    raise ReproductionError(f"the run was started from {code.entry}, which cannot be started again; "
                            "run its code as a module or script to make it repeatable")


def replay_command(original: LoggedRun, spec_file: Path, project: str | Path | None = None,
                   trust_record: bool = False) -> tuple[list[str], Path, Path]:
    """How to start a logged run's job again in a process of one's own, with the spec in ``spec_file``:
    the command, the folder to start it in, and the project folder (for PYTHONPATH). A record that does
    not fit the code on disk is refused, with the command, unless ``trust_record``."""
    folder = _project_folder(original, project)
    command, cwd = _restart_command(original.code, folder, _started_in(original, project, folder), spec_file,
                                    original.run_id, original.experiment_id or "0", through_mlproject=False)
    refuse_unless_fits(original.run_id, original.code, folder, project is None, None,  # type: ignore[arg-type]
                       Launch(command, cwd), trust_record)
    return command, cwd, folder


def _project_folder(original: LoggedRun, project: str | Path | None) -> Path:
    """The folder to start the job in: the one given, else the run's own project folder."""
    code = original.code
    folder = Path(project) if project is not None else Path(code.project_dir) if code else Path.cwd()
    if not folder.is_dir():
        raise ReproductionError(f"the project folder {folder} is not here: pass --project DIR, a checkout of the code "
                                f"run {original.run_id} ran")
    return folder.resolve()


def _started_in(original: LoggedRun, project: str | Path | None, folder: Path) -> Path:
    """Relative paths in the job's words are from where it was started, unless another checkout is asked for."""
    code = original.code
    started_in = Path(code.working_dir) if project is None and code is not None and code.working_dir else folder
    return started_in if started_in.is_dir() else folder


def hash_seed_of(original: LoggedRun) -> str | None:
    """PYTHONHASHSEED as the run's process had it; None where hashing was random."""
    hash_seed = original.environment.get("env.PYTHONHASHSEED", "0" if original.code is None else "unset")
    return None if hash_seed in _UNSET else hash_seed
