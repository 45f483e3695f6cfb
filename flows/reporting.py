"""The end of every flow run: the `report` stage, its report.html into the MLflow parent run, a
Markdown summary in the Prefect UI (with a link that opens the report), and the run's key params
and headline metrics on its MLflow parent run. Never fails the flow: whatever
goes wrong here is logged as a warning and the run's result stands.

    flows/pipeline.py  sgpo_pipeline -> finish_pipeline(cfg, ctx, report, force)
    flows/evaluate.py  evaluate      -> finish_evaluation(cfg, ctx, report, force)
"""

from __future__ import annotations

import json
from typing import Any

from sgpo.core import StageContext, stage_logger
from sgpo.report.summary import StageReport, dropped_note


def config_hash(cfg: Any) -> str:
    """8 hex digits of the configuration that changes results (runtime-only fields left out)."""
    from artifacts.hashing import sha256_text
    from sgpo.config import cache_payload

    try:
        payload = cache_payload(cfg)
    except Exception:  # noqa: BLE001 - any pydantic model will do
        payload = cfg.model_dump(mode="json")
    return sha256_text(json.dumps(payload, sort_keys=True, default=str))[:8]


def run_name(cfg: Any) -> str:
    """`sgpo-tiny-1a2b3c4d`: the recipe's name plus the short config hash (MLflow parent run name)."""
    return f"{cfg.name}-{config_hash(cfg)}"


def flow_run_namer(default_config: Any) -> Any:
    """A Prefect `flow_run_name` callable: a run whose name a person chose (the UI's Custom-run "Run
    Name", `prefect deployment run --flow-run-name`) keeps it; one named by Prefect (its made-up
    names, flows.run_names) is named `run_name(config)` (recipe + short config hash) from the flow
    run's validated `config` parameter, or from `default_config()` when none was given. Never raises
    (a name is not worth a failed run): falls back to `<flow>-<run id prefix>`."""

    def name() -> str:
        from prefect.context import FlowRunContext

        from flows.run_names import is_generated_name

        ctx = FlowRunContext.get()
        current = getattr(getattr(ctx, "flow_run", None), "name", None)
        if current and not is_generated_name(current):
            return current
        try:
            cfg = (ctx.parameters or {}).get("config") if ctx else None
            cfg = cfg if cfg is not None else default_config()
            if hasattr(
                cfg, "source"
            ):  # a pipeline config: named as it will run (form edits applied)
                from sgpo.config.pipeline import settle_config

                cfg = settle_config(cfg)
            return run_name(cfg)
        except Exception:  # noqa: BLE001
            return (
                f"{ctx.flow.name}-{str(ctx.flow_run.id)[:8]}"
                if ctx and ctx.flow_run
                else "sgpo-run"
            )

    return name


def method_of(cfg: Any) -> str:
    """The recipe and what it does, in words (`no-ref: SGPO No-Ref`; configuration, not code)."""
    algorithm = getattr(cfg, "algorithm", "sgpo")
    if algorithm != "sgpo":
        words = {
            "dpo": "DPO on preference pairs",
            "spin": "SPIN",
            "sapo": "SAPO",
            "sft": "SFT only",
            "sft_continued": "continued SFT",
        }.get(algorithm, algorithm)
        return f"{cfg.method}: {words}" if getattr(cfg, "method", algorithm) != algorithm else words
    parts = ["SGPO" if getattr(cfg, "shared_improver", True) else "SGPO-dagger"]
    try:
        if list(cfg.improver_sft.targets) == ["ext"]:
            parts.append("targets=ext")
        if cfg.pairs.chosen == "sft":
            parts.append("chosen=sft (diamond)")
        elif not cfg.pairs.refine_with_reference:
            parts.append("No-Ref (no y_sft in the refining prompt)")
        if cfg.improver_sft.with_reference:
            parts.append("All-Ref (y_sft in the improver's training prompt)")
    except AttributeError:
        pass
    rounds = getattr(cfg, "rounds", 1)
    if rounds > 1:
        parts.append(f"+ Step 2 ({rounds} rounds)")
    words = " ".join(parts)
    method = getattr(cfg, "method", "sgpo")
    return words if method == "sgpo" else f"{method}: {words}"


def _stage_items(stages: list[StageReport]) -> list[dict[str, Any]]:
    # what keys the report: artifacts and cache hits; not the seconds (they differ on every run: they
    # reach the report as ReportConfig.seconds, a runtime field)
    return [
        {"label": s.stage, "status": s.status, "uri": s.uri, "content_hash": s.content_hash}
        for s in stages
    ]


def run_report_stage(
    ctx: StageContext, stages: list[StageReport], title: str, force: list[str]
) -> StageReport | None:
    """The report stage (cached, in-process: it is a cheap CPU stage); None if it failed."""
    from flows.runner import StageRunner
    from tasks import get_stage
    from tasks.report import ReportConfig

    log = stage_logger("report")
    try:
        runner = StageRunner(ctx, [s for s in force if s == "report"])
        runner(
            "report",
            get_stage("report"),
            ReportConfig(seconds={s.stage: s.seconds for s in stages}),
            params={"stages": _stage_items(stages), "title": title},
        )
        done = runner.reports[-1]
        missing = done.summary.get("missing") or {}
        if missing:
            log.warning(
                "report: %d figure(s) missing: %s",
                len(missing),
                "; ".join(f"{k}: {v}" for k, v in missing.items()),
            )
        return done
    except Exception as e:  # noqa: BLE001 - the report never fails the run
        log.warning("report not made (the run itself is fine): %s: %s", type(e).__name__, e)
        return None


def _served(tracking: Any, ui_url: str | None) -> str | None:
    """The MLflow server's address for a browser: `ui_url`, else the tracking URI when it is a server."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking is not None and tracking.uri.startswith(("http://", "https://")):
        return tracking.uri.rstrip("/")
    return None


def mlflow_run_url(tracking: Any, ui_url: str | None = None) -> str | None:
    if tracking is None:
        return None
    if served := _served(tracking, ui_url):
        return f"{served}/#/experiments/{tracking.experiment_id}/runs/{tracking.parent_run_id}"
    return f"{tracking.uri} (run {tracking.parent_run_id}; `mlflow ui --backend-store-uri {tracking.uri}`)"


def eval_rows_note(stages: list[Any]) -> str:
    """The eval data's dropped rows (prepare[eval]), for the judge's line: a smaller eval set."""
    summary = next((s.summary for s in stages if s.stage == "prepare[eval]"), None)
    return dropped_note(summary, "rows of the eval data")


def log_report_to_mlflow(tracking: Any, ctx: StageContext, report: StageReport | None) -> bool:
    """The run's report.html as an artifact of its MLflow parent run (MLflow's UI shows the page,
    and serves it to whoever reaches the server); also when the report stage was cached, so every
    run that names this report has it. False (logged) when there is nothing to log or MLflow fails."""
    if tracking is None or report is None or not report.summary.get("html"):
        return False
    import tempfile
    from pathlib import Path

    from sgpo.core.tracking import _client
    from sgpo.report.html import REPORT_FILE

    try:
        html = ctx.open_store().read_bytes(report.summary["html"])
        with tempfile.TemporaryDirectory(prefix="sgpo-report-") as tmp:
            path = Path(tmp) / REPORT_FILE
            path.write_bytes(html)
            _client(tracking.uri).log_artifact(tracking.parent_run_id, str(path))
        return True
    except Exception as e:  # noqa: BLE001 - the report stays in the store
        stage_logger("flow").warning(
            "report.html not logged to MLflow: %s: %s", type(e).__name__, e
        )
        return False


def report_link(
    tracking: Any, ui_url: str | None, report: StageReport | None, in_mlflow: bool
) -> str | None:
    """The page of the run's report in MLflow's UI (its copy in the MLflow parent run, served by the
    MLflow server), or None without a server: then the summary names the store's file, which a
    browser opens from the address bar (it follows no file:// link from a web page)."""
    from sgpo.report.html import REPORT_FILE

    if report is None or not in_mlflow or not (served := _served(tracking, ui_url)):
        return None
    return (
        f"{served}/#/experiments/{tracking.experiment_id}/runs/{tracking.parent_run_id}"
        f"/artifactPath/{REPORT_FILE}"
    )


def _fmt(v: Any, nd: int = 1) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def judged_line(name: str, s: dict[str, Any]) -> str:
    if isinstance(s.get("score"), (int, float)):  # Arena-Hard
        return (
            f"{name}: score {_fmt(s['score'])} (95% CI {_fmt(s.get('ci_low'))} to {_fmt(s.get('ci_high'))}), "
            f"{s.get('n_questions')} questions"
        )
    from sgpo.evals.pairwise import label_note

    if s.get("win_rate") is None:
        return f"{name}: no win rate ({s.get('n_labelled', 0)} of {s.get('n', 0)} labelled){label_note(s)}"
    line = f"{name}: win rate {_fmt(s['win_rate'])}% (SE {_fmt(s.get('standard_error'))}), {s.get('n_labelled')} of {s.get('n')} judged{label_note(s)}"
    if isinstance(s.get("lc_win_rate"), (int, float)):
        line += f"; LC {_fmt(s['lc_win_rate'])}% (SE {_fmt(s.get('lc_standard_error'))})"
    return line


def _num(v: Any) -> float | None:
    return round(float(v), 2) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def benchmark_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    """A judged benchmark's numbers as table rows, rounded to 2 decimals, each with its SE or 95% CI."""
    rows = []

    def add(
        metric: str, value: Any, se: Any = None, lo: Any = None, hi: Any = None, n: Any = None
    ) -> None:
        if _num(value) is not None:
            rows.append(
                {
                    "metric": metric,
                    "value": _num(value),
                    "SE": _num(se),
                    "CI 95% low": _num(lo),
                    "CI 95% high": _num(hi),
                    "n": n,
                }
            )

    add("win rate (%)", s.get("win_rate"), se=s.get("standard_error"), n=s.get("n_labelled"))
    add("discrete win rate (%)", s.get("discrete_win_rate"), n=s.get("n_labelled"))
    add(
        "LC win rate (%)",
        s.get("lc_win_rate"),
        se=s.get("lc_standard_error"),
        n=s.get("n_labelled"),
    )
    add(
        "score",
        s.get("score"),
        lo=s.get("ci_low"),
        hi=s.get("ci_high"),
        n=s.get("n_questions") or s.get("n_rated"),
    )
    add("turn 1 score", s.get("score_turn_1"))
    add("turn 2 score", s.get("score_turn_2"))
    return [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]


def artifact_key(name: str) -> str:
    """`sgpo-bench-<name>` in the characters Prefect allows in a key (lowercase, digits, dashes)."""
    import re

    return "sgpo-bench-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed")


def publish_benchmark_tables(judged: dict[str, dict[str, Any]]) -> list[str]:
    """One Prefect table artifact per judged benchmark ({name: summary}); returns the keys made."""
    keys = []
    try:
        from prefect.artifacts import create_table_artifact

        for name, s in judged.items():
            rows = benchmark_rows(s or {})
            if not rows:
                continue
            versus = (
                f" vs {s.get('baseline') or s.get('baseline_column')}"
                if (s.get("baseline") or s.get("baseline_column"))
                else ""
            )
            create_table_artifact(
                key=artifact_key(name),
                table=rows,
                description=f"{name}{versus}: judged numbers, rounded, with SE / 95% CI",
            )
            keys.append(artifact_key(name))
    except Exception as e:  # noqa: BLE001 - outside a run, or the API is down
        stage_logger("flow").debug("no benchmark table artifacts: %s", e)
    return keys


def summary_markdown(
    *,
    title: str,
    method: str,
    stages: list[StageReport],
    judged: list[str],
    final_policy: str | None,
    mlflow_url: str | None,
    report: StageReport | None,
    report_url: str | None = None,
) -> str:
    ran = sum(s.status == "ran" for s in stages)
    lines = [f"# {title}", "", f"**Method**: {method}", ""]
    if final_policy:
        lines += [
            f"**Final policy** (`sgpo evaluate eval-alpaca-arena model.path=...`): `{final_policy}`",
            "",
        ]
    lines += ["**Judged**:", *([f"- {j}" for j in judged] or ["- nothing judged"]), ""]
    lines += [
        f"**Stages**: {ran} ran, {len(stages) - ran} cached (table artifact `sgpo-stages`)",
        "",
    ]
    lines += [f"**MLflow**: {mlflow_url or 'tracking off'}", ""]
    if report is not None:
        html = report.summary.get("html")
        where = f"[report.html]({report_url})" if report_url else f"`{html}`"
        lines += [
            f"**Report**: {where} (figures, stage table, lineage; in the store: `{html}`); a local "
            f"copy: `sgpo report {report.uri} -o report.html`"
        ]
        if report.summary.get("missing"):
            lines += [
                "",
                "Figures not made: "
                + "; ".join(f"{k} ({v})" for k, v in report.summary["missing"].items()),
            ]
    else:
        lines += ["**Report**: not made (see the run's logs)"]
    return "\n".join(lines)


def _publish_markdown(markdown: str, description: str) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key="sgpo-summary", description=description)
    except Exception as e:  # noqa: BLE001 - outside a run, or the API is down
        stage_logger("flow").debug("no summary artifact: %s", e)


def _log_parent(tracking: Any, params: dict[str, Any], metrics: dict[str, float]) -> None:
    if tracking is None:
        return
    try:
        from sgpo.core.tracking import StageTracker, _client

        t = StageTracker(_client(tracking.uri), tracking.parent_run_id)
        existing = t.client.get_run(tracking.parent_run_id).data.params
        t.log_params(
            {k: v for k, v in params.items() if k not in existing}
        )  # a retry may not change a param
        t.log_metrics(metrics)
    except Exception as e:  # noqa: BLE001
        stage_logger("flow").warning("MLflow parent run not updated: %s", e)


def _headline_metrics(prefix: str, s: dict[str, Any]) -> dict[str, float]:
    keys = (
        "win_rate",
        "standard_error",
        "discrete_win_rate",
        "lc_win_rate",
        "lc_standard_error",
        "n_labelled",
        "score",
        "ci_low",
        "ci_high",
    )
    return {
        f"{prefix}.{k}": float(s[k])
        for k in keys
        if isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool)
    }


def finish_pipeline(cfg: Any, ctx: StageContext, report: Any, force: list[str]) -> str | None:
    """Report stage, summary artifact, parent params/metrics; returns the report artifact's URI."""
    try:
        title = f"{cfg.name} ({method_of(cfg)}), config {config_hash(cfg)}"
        done = run_report_stage(ctx, report.stages, title, force)
        ui_url = cfg.tracking.ui_url
        in_mlflow = log_report_to_mlflow(ctx.tracking, ctx, done)
        judged = [
            judged_line("judge (final policy vs the eval set's baseline)", report.judge or {})
            + eval_rows_note(report.stages)
        ]
        checks = report.checks
        judged += [
            judged_line(f"check {name} ({s.get('model_column')} vs {s.get('baseline_column')})", s)
            for name, s in checks.items()
        ]
        publish_benchmark_tables(
            {"judge": report.judge or {}} | {f"check {n}": s for n, s in checks.items()}
        )
        _publish_markdown(
            summary_markdown(
                title=title,
                method=method_of(cfg),
                stages=report.stages,
                judged=judged,
                final_policy=report.final_policy,
                mlflow_url=mlflow_run_url(ctx.tracking, ui_url),
                report=done,
                report_url=report_link(ctx.tracking, ui_url, done, in_mlflow),
            ),
            f"{cfg.name}: summary of this run",
        )
        metrics = {
            **_headline_metrics("judge", report.judge or {}),
            **{
                k: v
                for n, s in checks.items()
                for k, v in _headline_metrics(f"check.{n}", s).items()
            },
            "stages.ran": float(sum(s.status == "ran" for s in report.stages)),
            "stages.cached": float(sum(s.status == "cached" for s in report.stages)),
        }
        _log_parent(
            ctx.tracking,
            {
                "method": method_of(cfg),
                "config_hash": config_hash(cfg),
                "rounds": cfg.rounds,
                "shared_improver": cfg.shared_improver,
                "dpo.beta": cfg.dpo.beta,
                "final_policy": report.final_policy,
                "report": (done.summary.get("html") if done else ""),
            },
            metrics,
        )
        return done.uri if done else None
    except Exception as e:  # noqa: BLE001
        stage_logger("flow").warning("end-of-run summary not made: %s: %s", type(e).__name__, e)
        return None


def finish_evaluation(cfg: Any, ctx: StageContext, report: Any, force: list[str]) -> str | None:
    try:
        title = f"{cfg.name}: evaluation of {report.model_name}, config {config_hash(cfg)}"
        done = run_report_stage(ctx, report.stages, title, force)
        ui_url = cfg.tracking.ui_url
        in_mlflow = log_report_to_mlflow(ctx.tracking, ctx, done)
        judged = []
        if report.alpaca_eval:
            judged.append(judged_line("AlpacaEval 2.0", report.alpaca_eval))
        if report.arena_hard:
            judged.append(judged_line("Arena-Hard v0.1", report.arena_hard))
        for name, p in report.pairwise.items():
            judged.append(judged_line(f"pairwise {name}", p))
        publish_benchmark_tables(
            {
                k: v
                for k, v in [
                    ("alpaca-eval", report.alpaca_eval),
                    ("arena-hard", report.arena_hard),
                    ("mt-bench", report.mt_bench),
                ]
                if v
            }
            | {f"pairwise {n}": p for n, p in report.pairwise.items()}
        )
        _publish_markdown(
            summary_markdown(
                title=title,
                method=f"evaluation of {report.model}",
                stages=report.stages,
                judged=judged,
                final_policy=None,
                mlflow_url=mlflow_run_url(ctx.tracking, ui_url),
                report=done,
                report_url=report_link(ctx.tracking, ui_url, done, in_mlflow),
            ),
            f"{cfg.name}: summary of this evaluation",
        )
        _log_parent(
            ctx.tracking,
            {
                "model": report.model,
                "config_hash": config_hash(cfg),
                "report": (done.summary.get("html") if done else ""),
            },
            {},
        )
        return done.uri if done else None
    except Exception as e:  # noqa: BLE001
        stage_logger("flow").warning("end-of-run summary not made: %s: %s", type(e).__name__, e)
        return None
