"""Shared fixtures: a real MLflow store in a temporary folder (copied from one migrated template), the
team tier's one `mlflow server` on PostgreSQL, and job subprocesses.

Two tiers: a test that starts a process (a job, `mlflow run`, torchrun, a server, a browser) carries the
marker ``e2e``; ``pytest -m "not e2e"`` is the fast tier, every rule checked in this process.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import mlflow
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, settings

from tests.helpers.postgres import Postgres, postgres_bin
from tests.helpers.server import MlflowServer

# Property tests: the same examples on every run, and a bounded number of them (README: reliability).
settings.register_profile("ci", derandomize=True, max_examples=200, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's runs keep their spool (mlrepro.store.spool) in its own folder, never the user's."""
    folder = tmp_path / "spool"
    monkeypatch.setenv("MLREPRO_SPOOL_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def fast_tier_starts_no_interpreter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast tier's promise, kept by the suite itself: a test not marked ``e2e`` starts no Python
    process of its own (a job, `mlflow run`, torchrun, a server). Only the run's own writer, which
    mlrepro starts for every run, is let through."""
    if request.node.get_closest_marker("e2e"):
        return
    real_init = subprocess.Popen.__init__

    def refuse_interpreters(popen: subprocess.Popen, args: object, *rest: object, **options: object) -> None:
        words = [str(word) for word in ([args] if isinstance(args, (str, bytes, os.PathLike)) else args)]
        if words and words[0] == sys.executable and not {"mlrepro.store.zygote", "mlrepro.store.writer_process"} & set(words):
            raise AssertionError(f"this test starts a process ({' '.join(words)[:200]}): mark it e2e")
        real_init(popen, args, *rest, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_interpreters)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_stores`` runs on a SQLite file and again in the team tier."""
    if "store" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store", ["sqlite", pytest.param("team", marks=pytest.mark.team)], indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL on loopback, for the session. Where it is missing the team tier is
    skipped; CI installs it and sets MLREPRO_REQUIRE_POSTGRES, so there it must run."""
    missing = None
    if postgres_bin() is None:
        missing = "PostgreSQL is not installed (apt-get install postgresql)"
    elif importlib.util.find_spec("psycopg") is None:
        missing = "psycopg is not installed (pip install 'psycopg[binary]')"
    if missing:
        if os.environ.get("MLREPRO_REQUIRE_POSTGRES"):
            pytest.fail(f"{missing}, and MLREPRO_REQUIRE_POSTGRES is set")
        pytest.skip(f"{missing}: the team tier is skipped")
    cluster = Postgres()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def team_server(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> Iterator[MlflowServer]:
    """One `mlflow server` for the session, its runs in PostgreSQL and its artifacts served from a
    folder, as a team runs it. Each test gets an experiment of its own on it (``team_experiment``)."""
    server = MlflowServer(tmp_path_factory.mktemp("team-server"), backend_uri=postgres.create_database("mlflow_team"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def team_experiment(team_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new experiment on the session's team server; this test's runs, its jobs' and `mlflow run`'s
    go there (MLFLOW_EXPERIMENT_ID), so tests sharing the server never see each other's runs."""
    experiment_id = mlflow.MlflowClient(team_server.uri).create_experiment(f"test-{uuid.uuid4().hex}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    return experiment_id


def experiment() -> str:
    """The experiment this test's runs go to: its own on the team server, else the store's default."""
    return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")


def make_store_template(folder: Path) -> Path:
    """A SQLite store whose schema MLflow has migrated, its default experiment's artifacts in
    ``folder/mlruns``. Migrating takes seconds; tests copy the file (``copy_store``) instead."""
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    client.search_experiments(max_results=1)  # creates the schema, and the default experiment...
    with sqlite3.connect(database) as db:      # ...whose artifacts MLflow placed under the cwd
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(folder / "mlruns" / "0"),))
    return folder


def copy_store(template: Path, folder: Path) -> str:
    """A copy of a template store (its database and artifacts) in ``folder``, every artifact
    location moved there too, so writes to the copy never reach the template; its URI."""
    shutil.copytree(template, folder, dirs_exist_ok=True)
    database = folder / "mlflow.db"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                   (str(template), str(folder)))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (str(template), str(folder)))
    return f"sqlite:///{database}"


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's one migrated, empty SQLite store."""
    return make_store_template(tmp_path_factory.mktemp("store-template"))


def use_store(uri: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process, and every command a test starts, at ``uri``, from ``cwd``."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          store_template: Path) -> Iterator[str]:
    """A fresh tracking store: a SQLite file whose artifacts land under tmp_path too (copied from
    the session's template), or, in the team tier, an experiment of this test's own on the team's
    `mlflow server` (``http://127.0.0.1:PORT``)."""
    if getattr(request, "param", "sqlite") == "team":
        request.getfixturevalue("team_experiment")
        uri = request.getfixturevalue("team_server").uri
    else:
        uri = copy_store(store_template, tmp_path)
    use_store(uri, tmp_path, monkeypatch)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def trained(spec: object, train: Callable[[object, object], None]) -> str:
    """A run of ``train`` opened by ``start_run(spec)`` in this process; its id."""
    from mlrepro.training.tracking import start_run

    with start_run(spec) as run:
        train(spec, run)
    return run.run_id


def make_shared_runs(folder: Path, store_template: Path, make: Callable[[pytest.MonkeyPatch], list[str]]) -> list[str]:
    """Runs made once a session, in this process, into a store of their own in ``folder`` that
    tests copy (``copy_store``); ``make`` logs them and returns their ids."""
    uri = copy_store(store_template, folder)
    with pytest.MonkeyPatch.context() as patch:
        use_store(uri, folder, patch)
        patch.setenv("MLREPRO_SPOOL_DIR", str(folder / "spool"))
        try:
            return make(patch)
        finally:
            mlflow.set_tracking_uri(None)


@dataclass(frozen=True)
class LineFitRuns:
    """Line-fit runs made once a session, read by many tests: ``same_a`` and ``same_b`` ran the same
    spec (seed 3, 30 steps), ``other_seed`` seed 4; ``folder`` is their store, for ``copy_store``."""

    folder: Path
    same_a: str
    same_b: str
    other_seed: str


@pytest.fixture(scope="session")
def linefit_runs(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> LineFitRuns:
    """Made in this process: that two processes repeat bit for bit is proven end to end, once
    (test_mlflow_run); tests of what is done with runs read these."""
    from projects.linefit.spec import LineFitSpec
    from projects.linefit.train import train

    def make(_: pytest.MonkeyPatch) -> list[str]:
        return [trained(LineFitSpec(seed=seed, steps=30), train) for seed in (3, 3, 4)]

    folder = tmp_path_factory.mktemp("linefit-runs")
    return LineFitRuns(folder, *make_shared_runs(folder, store_template, make))


@dataclass(frozen=True)
class PlantedRuns:
    """Runs of the planted job (tests/jobs/planted.py: 40 steps, fingerprints at every step, no
    checkpoint), made once a session: ``plain`` twice, and one weight moved by one ulp after the
    backward of step 5 (``head.bias``), step 25 (``head.bias``) and the last step, 39 (``conv.weight``)."""

    folder: Path
    plain: str
    plain_again: str
    ulp_at_5: str
    ulp_at_25: str
    ulp_at_39: str


PLANTED_ULPS = ["", "", "5:head.bias", "25:head.bias", "39:conv.weight"]


@pytest.fixture(scope="session")
def planted_runs(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> PlantedRuns:
    from tests.jobs.planted import PlantedSpec, train

    def make(patch: pytest.MonkeyPatch) -> list[str]:
        made = []
        for ulp in PLANTED_ULPS:
            patch.setenv("PLANT_ULP", ulp)
            made.append(trained(PlantedSpec(fingerprint_every=1, checkpoint_every=0), train))
        return made

    folder = tmp_path_factory.mktemp("planted-runs")
    return PlantedRuns(folder, *make_shared_runs(folder, store_template, make))


def copy_of(runs_fixture: str) -> Callable[..., Iterator[object]]:
    """A fixture that makes this test's own copy of the session's shared runs ``runs_fixture`` the
    current store, and gives the test their ids; what the test writes stays in its copy."""

    @pytest.fixture
    def fixture(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
        runs = request.getfixturevalue(runs_fixture)
        use_store(copy_store(runs.folder, tmp_path), tmp_path, monkeypatch)
        yield runs
        mlflow.set_tracking_uri(None)

    return fixture


linefit_store = copy_of("linefit_runs")  # LineFitRuns
planted_store = copy_of("planted_runs")  # PlantedRuns


def run_here(command: click.Command, *args: str) -> Result:
    """A command line (mlrepro's, or a job's) in this process, as its own process would run it:
    exit code, stdout and stderr apart. Tests of messages and exit codes use this; a test that
    needs a process of its own (a signal, a repeat across processes) is ``e2e``."""
    import mlrepro.capture.code

    with pytest.MonkeyPatch.context() as patch:
        # A job's command line marks the process as one; this process runs more than one.
        patch.setattr(mlrepro.capture.code, "_takes_spec_file", False)
        return CliRunner().invoke(command, list(args), catch_exceptions=False)


def stopped_here(command: click.Command, *args: str, after: int, folder: Path) -> str:
    """A job's command line run here under orders (mlrepro.training.orders) to stop once ``after`` steps are
    logged: the run ends there with the checkpoints it logged, as a kill after them leaves them, and
    a resume can start from them. The run's id."""
    from mlrepro.training.orders import ORDERS_ENV, Orders

    orders = folder / "orders.json"
    orders.write_text(Orders(stop_after=after).model_dump_json())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ORDERS_ENV, str(orders))
        result = run_here(command, *args)
    assert result.exit_code == 0, result.stderr[-3000:]
    return only_run_id(mlflow.get_tracking_uri())


def assert_one_line_error_here(result: Result, *fragments: str) -> None:
    """``assert_one_line_error`` for a command run in this process (``run_here``)."""
    assert_user_error(result.exit_code, result.stderr, fragments)


def job_env(store_uri: str, **extra_env: str) -> dict[str, str]:
    """The environment of a command run against the store, as a user's shell would give it."""
    # This interpreter's scripts first: `mlflow run` starts `python`, the compare entry point `mlrepro`.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, MLFLOW_TRACKING_URI=store_uri, PYTHONPATH=str(REPO), PATH=path, **extra_env)
    env.pop("MLFLOW_RUN_ID", None)
    return env


def run_command(args: list[str], store_uri: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process against the store, as a user would."""
    env = job_env(store_uri, **extra_env)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def run_linefit(store_uri: str, cwd: Path, *assignments: str) -> subprocess.CompletedProcess[str]:
    """The line-fit job in a fresh Python process, as MLproject starts it."""
    return run_command(
        [sys.executable, "-m", "projects.linefit", *assignments], store_uri, cwd, PYTHONHASHSEED="0"
    )


def mlflow_run(store_uri: str, cwd: Path, *params: str, entry_point: str = "main") -> subprocess.CompletedProcess[str]:
    """`mlflow run` of this repository, as the README says, in its own process."""
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
    for param in params:
        args += ["-P", param]
    return run_command(args, store_uri, cwd)


def mlrepro_cli(store_uri: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_command([sys.executable, "-m", "mlrepro", *args], store_uri, cwd)


def only_run_id(store_uri: str) -> str:
    """The newest run of this test's experiment."""
    runs = mlflow.MlflowClient(store_uri).search_runs(experiment_ids=[experiment()],
                                                      order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A user error from a command in a process of its own."""
    assert_user_error(result.returncode, result.stderr, fragments)


def assert_user_error(exit_code: int, stderr: str, fragments: tuple[str, ...]) -> None:
    """A user error: exit 2, one line on stderr starting 'mlrepro: error:' holding every fragment,
    no traceback."""
    assert exit_code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("mlrepro: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def run_planted(store_uri: str, cwd: Path, *words: str, **env: str) -> str:
    """The planted test job (tests/jobs/planted.py) in its own process, differences planted by ``env``;
    returns its run id."""
    result = run_command([sys.executable, str(REPO / "tests" / "jobs" / "planted.py"), *words], store_uri, cwd, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    return announced_run_id(result.stderr)


def announced_run_id(stderr: str) -> str:
    """The run a job says it logs to, on its stderr: ``mlrepro: run ID in URI``."""
    return next(line.split()[2] for line in stderr.splitlines() if line.startswith("mlrepro: run "))


def jobs_two_at_once(store: str, cwd: Path, commands: list[list[str]], **env: str) -> list[str]:
    """Job commands, each in a process of its own, two at once (one a core); their run ids, in order."""
    ids = []
    for start in range(0, len(commands), 2):
        jobs = [subprocess.Popen(command, cwd=cwd, env=job_env(store, PYTHONHASHSEED="0", **env),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for command in commands[start:start + 2]]
        for job in jobs:
            _, stderr = job.communicate(timeout=300)
            assert job.returncode == 0, stderr[-3000:]
            ids.append(announced_run_id(stderr))
    return ids


def start_job(store: str, cwd: Path, command: list[str]) -> subprocess.Popen[str]:
    """A job in the background, to be killed."""
    return subprocess.Popen(command, cwd=cwd, env=job_env(store, PYTHONHASHSEED="0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def checkpoints(run_id: str) -> list[str]:
    entries = mlflow.MlflowClient().list_artifacts(run_id, "mlrepro/checkpoints")
    return [entry.path for entry in entries if entry.path.endswith(".pt")]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once. torchrun starts each rank in a session
    of its own, so killing torchrun's process group would leave the ranks running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, todo = [], [pid]
    while todo:
        current = todo.pop()
        doomed.append(current)
        todo.extend(children.get(current, []))
    for victim in doomed:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_after_checkpoints(store: str, job: subprocess.Popen[str], at_least: int, tree: bool = False) -> str:
    """SIGKILL the job once it has logged ``at_least`` checkpoints, after a random extra moment."""
    deadline = time.monotonic() + 300
    run_id = None
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended before it could be killed: {job.stderr.read()[-2000:]}"
        runs = mlflow.MlflowClient().search_runs([experiment()])
        if runs:
            run_id = runs[0].info.run_id
            if len(checkpoints(run_id)) >= at_least:
                break
        time.sleep(0.05)
    # The step it dies at is not chosen here; the seed of that choice is printed, so a failure replays.
    seed = int(os.environ.get("MLREPRO_KILL_SEED", random.randrange(2**32)))
    print(f"kill moment seed: {seed} (MLREPRO_KILL_SEED={seed} replays it)")
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    if tree:
        kill_tree(job.pid)  # torchrun and every rank with their children, as a node that goes down
    else:
        job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL and run_id is not None
    return run_id
