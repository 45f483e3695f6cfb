"""The report one click away, in a real browser: a run of the tiny preset's SFT recipe against a real
Prefect server and a real MLflow server; its summary artifact in the Prefect UI links to the run's
report.html in the MLflow run; headless Chromium (Debian's package, through Playwright) opens the
summary in the Prefect UI, clicks the link, and the MLflow UI shows the report: its title, every
image decoded, one stage-table row per stage with this run's seconds.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers.cluster import MLFLOW, SERVER, Procs, fill, http_ok, wait_for
from tests.helpers.net import free_port

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
STAGES = ["base_model", "prepare[sft]", "sft", "prepare[eval]", "judge"]


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip(
            "Chromium is not installed (`apt-get install -y chromium`; scripts/test.sh does)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-link")
    procs = Procs(tmp)
    port, mlflow_port = free_port(), free_port()
    api, mlflow = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{mlflow_port}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        procs.start(
            "server",
            fill(SERVER, "127.0.0.1", str(port)),
            # the UI in the browser calls the API here (docs/cluster.md section 1)
            {**env, "PREFECT_HOME": str(tmp / "server-home"), "PREFECT_UI_API_URL": api},
        )
        (tmp / "mlflow").mkdir()
        procs.start(
            "mlflow",
            fill(
                MLFLOW,
                "127.0.0.1",
                str(mlflow_port),
                f"sqlite:///{tmp}/mlflow/mlflow.db",
                str(tmp / "mlflow" / "artifacts"),
                extra=("--workers", "1"),
            ),
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            cwd=tmp / "mlflow",
        )
        wait_for(lambda: http_ok(f"{api}/health"), 180, "the Prefect server")
        wait_for(lambda: http_ok(f"{mlflow}/health"), 180, "the MLflow server")
        yield {"tmp": tmp, "api": api, "ui": f"http://127.0.0.1:{port}", "mlflow": mlflow}
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def run(servers):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import sgpo_pipeline
    from sgpo.config import load_config

    cfg = load_config(
        "tiny",
        [
            "method=sft",
            f"store.url=file://{servers['tmp']}/store",
            f"tracking.mlflow_uri={servers['mlflow']}",
        ],
    )
    with temporary_settings(updates={PREFECT_API_URL: servers["api"]}):
        report = sgpo_pipeline(config=cfg)
        with get_client(sync_client=True) as client:
            (summary,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["sgpo-summary"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[report.flow_run_id]),
                )
            )
    return cfg, report, summary


def test_the_summary_links_to_the_report_served_by_mlflow(servers, run, browser):
    from mlflow.tracking import MlflowClient

    cfg, report, summary = run
    artifacts = MlflowClient(servers["mlflow"]).list_artifacts(report.mlflow_run_id)
    assert "report.html" in [a.path for a in artifacts]

    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{servers['ui']}/artifacts/artifact/{summary.id}", wait_until="networkidle")
    link = page.get_by_role("link", name="report.html")
    link.wait_for(timeout=60_000)
    assert link.get_attribute("href").startswith(servers["mlflow"])
    with context.expect_page() as opened:  # Prefect's Markdown opens links in a new tab
        link.click()
    mlflow_page = opened.value
    mlflow_page.wait_for_load_state("load")
    assert mlflow_page.url == link.get_attribute("href")
    # MLflow's artifact viewer shows the file in an iframe (on a blob: URL, re-made as the page
    # refreshes): a frame locator finds whichever is there
    report = mlflow_page.frame_locator("iframe").locator("html")
    try:
        report.locator("h1").first.wait_for(timeout=120_000)
        page_facts = report.evaluate("""root => ({
            title: root.querySelector('h1').textContent,
            images: [...root.ownerDocument.images].map(i => i.complete && i.naturalWidth > 0),
            stages: [...root.querySelectorAll('#stages tbody tr')].map(r => r.cells[0].textContent),
            seconds: [...root.querySelectorAll('#stages tbody tr')].map(r => r.cells[2].textContent),
        })""")
    except Exception:
        mlflow_page.screenshot(path=str(servers["tmp"] / "mlflow-page.png"), full_page=True)
        raise AssertionError(
            f"MLflow's UI did not show report.html at {mlflow_page.url} (frames "
            f"{[f.url for f in mlflow_page.frames]}; screenshot in {servers['tmp']})"
        ) from None
    context.close()
    assert page_facts["title"].startswith(f"{cfg.name} (SFT only)"), page_facts["title"]
    assert page_facts["images"] and all(page_facts["images"]), page_facts["images"]
    assert page_facts["stages"] == STAGES, page_facts["stages"]
    assert all(float(s) >= 0 for s in page_facts["seconds"]), page_facts["seconds"]
