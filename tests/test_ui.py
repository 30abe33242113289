"""The MLflow UI's run comparison, checked in a real browser against a real `mlflow server`.

Headless Debian Chromium, driven by Playwright through the installed browser
(Playwright's own browser download needs a network this project cannot assume).
Set MLREPRO_SCREENSHOT=PATH to keep the screenshot (the README's is made so).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import pytest

from mlrepro import load_run
from tests.conftest import experiment, mlrepro_cli, only_run_id, run_linefit
from tests.helpers.server import MlflowServer

CHROMIUM = os.environ.get("MLREPRO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Flags a sandbox without a network needs: no background fetches, no sandboxing as root.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def _browser_or_skip() -> object:
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if CHROMIUM is None:
        missing = "Chromium is not installed (apt-get install chromium)"
    if missing:
        if os.environ.get("MLREPRO_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture
def server(team_server: MlflowServer, team_experiment: str) -> str:
    """The session's team server (`mlflow server` on PostgreSQL, served artifacts), in an experiment of
    this test's own: the UI is the same whatever store is behind the server, so it is checked once,
    against a team's stack."""
    return team_server.uri


@pytest.mark.e2e
@pytest.mark.team
def test_the_run_comparison_view_shows_loss_seed_and_mlrepro_tags(tmp_path: Path, server: str) -> None:
    sync_playwright = _browser_or_skip()
    work = tmp_path / "work"
    work.mkdir()
    assert run_linefit(server, work, "seed=3", "steps=40").returncode == 0
    run_a = only_run_id(server)
    assert run_linefit(server, work, "seed=4", "steps=40").returncode == 0
    run_b = only_run_id(server)
    assert mlrepro_cli(server, work, "compare", "--log", run_a, run_b).returncode == 1
    tags = {run_id: mlflow.MlflowClient(server).get_run(run_id).data.tags for run_id in (run_a, run_b)}
    dataset = load_run(run_a, mlflow.MlflowClient(server)).datasets["line"]  # the points the line fit trains on

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 3400})
            page.goto(f'{server}/#/compare-runs?runs=["{run_a}","{run_b}"]&experiments=["{experiment()}"]')
            page.get_by_text("Run details").wait_for(timeout=90_000)
            page.get_by_text("mlrepro.spec_hash").wait_for(timeout=30_000)
            body = page.inner_text("body")
            # For the picture: what differs (seed, loss, spec hash, loss digest, verdicts), no side panels.
            for section in ("Visualizations", "Run details", "Artifacts"):
                page.get_by_role("button", name=section, exact=True).click()
            for switch in page.get_by_role("switch").all():
                switch.click()
            for panel in ("Close", "Toggle sidebar"):
                button = page.get_by_role("button", name=panel, exact=True)
                if button.count():
                    button.first.click()
            page.set_viewport_size({"width": 1400, "height": 900})
            screenshot = tmp_path / "mlflow-compare.png"
            page.screenshot(path=str(screenshot))
            # Each run's page lists the data it trained on: MLflow's dataset tracking, as the run logged it.
            page.set_viewport_size({"width": 1400, "height": 1600})
            page.goto(f"{server}/#/experiments/{experiment()}/runs/{run_a}")
            page.get_by_text(f"{dataset.name} ({dataset.digest})").first.wait_for(timeout=60_000)
            run_page = page.inner_text("body")
        finally:
            browser.close()

    rows = {line.split("\t")[0].strip(): line.split("\t")[1:] for line in body.splitlines() if "\t" in line}
    assert rows["seed"] == ["3", "4"] or rows["seed"] == ["4", "3"]
    assert "loss" in body.split("Metrics", 1)[1]
    for key in ["mlrepro.spec_hash", "mlrepro.env_hash", "mlrepro.loss_digest", "mlrepro.environment.torch.version",
                "mlrepro.environment.determinism.deterministic_algorithms",
                "mlrepro.environment.determinism.intra_op_threads",
                f"mlrepro.verdict.{run_b}"]:
        assert key in rows, key
        shown = {value.strip() for value in rows[key]}
        assert {tags[run_id].get(key) for run_id in (run_a, run_b)} - {None} <= shown, key
    assert screenshot.stat().st_size > 20_000
    # The run overview's "Datasets" row: the dataset, its digest and its context.
    assert f"Datasets\n{dataset.name} ({dataset.digest})\nTrain" in run_page
    if os.environ.get("MLREPRO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["MLREPRO_SCREENSHOT"])
