"""The tiny run's report, rendered in a real browser (headless Chromium through Playwright).

The tiny pipeline runs once (its last stage is `report`); its report.html is opened from the
store and, separately, the copy `sgpo report STORE -o FILE` writes. In both: every image decoded
(naturalWidth > 0), the figures of the run are there (Fig. 3, 4, 5, a training curve per training
stage, the judge, the stage costs), the stage table has one row per stage of the run, the judged
numbers one row, and the page logged no console error and fetched nothing from a network.
Chromium is Debian's package; it is installed here if absent (apt-get) and the test skips, with
the reason, only where that is impossible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
EXPECTED_FIGURES = {
    "fig3_edit_vs_b",
    "fig4_edit_vs_a",
    "fig5_perplexity",
    "train_sft",
    "train_improver_sft",
    "train_dpo",
    "fig9_perplexity",
    "judge",
    "table1_improved_data",
    "fig8_refinement",
    "stages",
}
CHECKS = [
    "pairwise[imp_vs_policy]",
    "pairwise[imp_vs_reference]",
    "pairwise[refined_vs_initial]",
    "pairwise[refined_vs_reference]",
]
# base_model, prepare x4, sft, sample, annotate, ppl_filter, improver_sft, pairs, dpo, judge, the 4 checks
# and the refine step they need (pi_sft's refinements)
PIPELINE_STAGES = 15 + len(CHECKS)  # with ref_logps before dpo
CHECK_OVERRIDES = ["checks.improved_data=true", "checks.refinement=true"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=600
        )
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip(
        "Chromium is not installed and cannot be installed here (needs root and apt-get: "
        "`apt-get install -y chromium`)"
    )


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from flows.pipeline import sgpo_pipeline
    from sgpo.config import load_config

    work = tmp_path_factory.mktemp("report-run")
    cfg = load_config(
        "tiny",
        [
            f"store.url={work}/store",
            f"tracking.mlflow_uri=sqlite:///{work}/mlflow.db",
            *CHECK_OVERRIDES,
        ],
    )
    return work, sgpo_pipeline(config=cfg)


def _inspect(browser, path: Path) -> dict:
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    out = page.evaluate("""() => ({
        images: [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth})),
        figures: [...document.querySelectorAll('figure')].map(f => f.id.replace(/^fig-/, '')),
        stages: [...document.querySelectorAll('#stages tbody tr')].map(r => r.cells[0].textContent),
        statuses: [...document.querySelectorAll('#stages tbody tr')].map(r => r.cells[1].textContent),
        headline: [...document.querySelectorAll('#headline tbody tr')].map(r => [...r.cells].map(c => c.textContent)),
        missing: document.querySelectorAll('#missing li').length,
        comparison: [...document.querySelectorAll('#comparison tbody tr')].map(r => [...r.cells].map(c => c.textContent)),
        sections: [...document.querySelectorAll('section.run')].map(s => ({
            id: s.id, figures: [...s.querySelectorAll('figure')].map(f => f.id.replace(/^run[0-9]+-fig-/, '')),
            stages: s.querySelectorAll('table[id$="-stages"] tbody tr').length})),
    })""")
    page.close()
    out["errors"] = errors
    out["remote"] = [u for u in requests if not u.startswith(("file:", "data:"))]
    return out


def test_the_tiny_runs_report_renders_in_chromium(browser, tiny_run):
    work, report = tiny_run
    assert report.report_uri and report.report_uri.startswith("file://")
    html = Path(report.report_uri.removeprefix("file://")) / "report.html"
    page = _inspect(browser, html)
    assert page["errors"] == [] and page["remote"] == [], page
    assert len(page["images"]) == len(EXPECTED_FIGURES)
    assert all(i["ok"] for i in page["images"]), page["images"]
    assert set(page["figures"]) == EXPECTED_FIGURES and page["missing"] == 0
    assert len(page["stages"]) == PIPELINE_STAGES == len(report.stages)
    assert page["stages"] == [s.stage for s in report.stages]
    assert set(page["statuses"]) == {"ran"}  # the first run on a fresh store
    row, *checks = page["headline"]
    assert row[0].startswith("judge") and row[1] == f"{report.judge['win_rate']:.1f}"
    assert row[2] == f"SE {report.judge['standard_error']:.1f}"
    assert [c[4] for c in checks] == CHECKS  # one row per data check, labelled by its stage
    assert [c[1] for c in checks] == [f"{report.checks[c[9:-1]]['win_rate']:.1f}" for c in CHECKS]


def test_sgpo_report_writes_the_same_page_from_the_store(browser, tiny_run, tmp_path):
    work, report = tiny_run
    out = tmp_path / "copy.html"
    done = subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", "report", f"{work}/store", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "copied from" in done.stdout and report.report_uri in done.stdout
    page = _inspect(browser, out)
    assert (
        page["errors"] == []
        and all(i["ok"] for i in page["images"])
        and len(page["images"]) == len(EXPECTED_FIGURES)
    )

    # from the lineage of the final policy instead (no report artifact used): the same figures but
    # the judge (upstream of dpo there is no judge), statuses unknown
    out2 = tmp_path / "lineage.html"
    done = subprocess.run(
        [sys.executable, "-m", "sgpo.cli.main", "report", report.final_policy, "-o", str(out2)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    page = _inspect(browser, out2)
    assert page["errors"] == [] and all(i["ok"] for i in page["images"])
    assert set(page["figures"]) == EXPECTED_FIGURES - {
        "judge",
        "table1_improved_data",
        "fig8_refinement",
    }
    # upstream of dpo: no prepare[eval], judge, checks or report
    assert len(page["stages"]) == PIPELINE_STAGES - 3 - len(CHECKS)
    assert page["stages"][-2:] == ["ref_logps", "dpo"]


@pytest.mark.slow  # a second run (30 s); one run's page stays default
def test_several_runs_on_one_page_comparison_table_and_fig10(browser, tiny_run, tmp_path):
    """`sgpo report RUN RUN`: the SGPO run beside a No-Ref run on a copy of its store (the copy shares every
    stage up to the improver; a copy, so the other tests' "newest report" of the store stays the SGPO
    run's): the comparison table has a row per run, Fig. 10 draws both refinement win rates, and each
    run's own section has its figures and stage table."""
    from flows.pipeline import sgpo_pipeline
    from sgpo.config import load_config

    work, report = tiny_run
    shutil.copytree(work / "store", tmp_path / "store")
    cfg = load_config(
        "tiny",
        [
            f"store.url={tmp_path}/store",
            f"tracking.mlflow_uri=sqlite:///{tmp_path}/mlflow.db",
            "method=no-ref",
            "checks.refinement=true",
        ],
    )
    no_ref = sgpo_pipeline(config=cfg)
    assert {s.stage: s.status for s in no_ref.stages}["improver_sft"] == "cached"
    out = tmp_path / "two.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgpo.cli.main",
            "report",
            report.report_uri,
            no_ref.report_uri,
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    page = _inspect(browser, out)
    assert page["errors"] == [] and page["remote"] == [], page
    assert page["images"] and all(i["ok"] for i in page["images"]), page["images"]
    assert "fig10_refinement_by_run" in page["figures"]
    rows = page["comparison"]
    assert (
        len(rows) == 2
        and "no-ref" in rows[1][0]
        and "No-Ref" in rows[1][0]
        and "no-ref" not in rows[0][0]
    )
    assert rows[0][4].startswith(f"{report.judge['win_rate']:.2f}") and rows[1][4].startswith(
        f"{no_ref.judge['win_rate']:.2f}"
    )
    one, two = page["sections"]
    assert set(one["figures"]) == EXPECTED_FIGURES and one["stages"] == PIPELINE_STAGES
    assert "fig8_refinement" in two["figures"] and "table1_improved_data" not in two["figures"]
    assert two["stages"] == len(no_ref.stages)
