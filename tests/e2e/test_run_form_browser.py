"""The deployment's Custom-run form as Prefect's UI renders it, in headless Chromium: the pipeline
deployment registered by `sgpo deploy` on a real Prefect server; each field is labelled with its own
name (the one `key=value` overrides use), a card lists the settings that change results before the
runtime ones, which say "(runtime)", and the runtime sections (store, tracking, ...) come last."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cluster import SERVER, Procs, fill, http_ok, wait_for
from tests.helpers.net import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def form_labels(tmp_path_factory) -> list[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip(
            "Chromium is not installed (`apt-get install -y chromium`; scripts/test.sh does)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import httpx

    tmp = tmp_path_factory.mktemp("run-form")
    procs = Procs(tmp)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        procs.start(
            "server",
            fill(SERVER, "127.0.0.1", str(port)),
            {**env, "PREFECT_HOME": str(tmp / "server-home"), "PREFECT_UI_API_URL": api},
        )
        wait_for(lambda: http_ok(f"{api}/health"), 180, "the Prefect server")
        deploy = subprocess.run(
            [sys.executable, "-m", "sgpo.cli.main", "deploy", "--name", "sgpo-pipeline"]
            + ["--store-url", f"file://{tmp}/store", "--mlflow-uri", f"sqlite:///{tmp}/m.db"],
            env={**env, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp / "client-home")},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        dep = httpx.get(f"{api}/deployments/name/sgpo/sgpo-pipeline", timeout=30).json()
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--headless", "--no-sandbox"])
            page = browser.new_page()
            page.goto(
                f"http://127.0.0.1:{port}/deployments/deployment/{dep['id']}/run",
                wait_until="networkidle",
            )
            page.get_by_text("per_device_batch_size (runtime)").first.wait_for(timeout=60_000)
            labels = page.eval_on_selector_all(
                ".p-label__text, label", "els => els.map(e => e.textContent.trim())"
            )
            browser.close()
        return [t.removesuffix(" (Optional)") for t in labels if t]
    finally:
        procs.stop_all()


def test_cards_put_result_settings_before_runtime_ones(form_labels):
    dpo = form_labels.index("dpo")
    card = form_labels[dpo + 1 : form_labels.index("dpo_baseline")]
    assert card.index("beta") < card.index("per_device_batch_size (runtime)"), card
    first_runtime = next(i for i, t in enumerate(card) if t.endswith("(runtime)"))
    assert "learning_rate" in card[:first_runtime] and "epochs" in card[:first_runtime], card
    assert sum(t.endswith("(runtime)") for t in form_labels) > 100


def test_runtime_sections_come_last(form_labels):
    top = ["checks", "store (runtime)", "tracking (runtime)", "embedded_llm (runtime)"]
    top += ["execution (runtime)", "hardware (runtime)"]
    at = [form_labels.index(t) for t in top]
    assert at == sorted(at), list(zip(top, at))
