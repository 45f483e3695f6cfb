"""The evaluation flow: AlpacaEval 2.0, Arena-Hard v0.1 and pairwise win rates of one model.

    model (tiny | local dir | artifact URI | hub id)
      -> alpaca_eval_generate -> alpaca_eval_judge    (WR, discrete WR, LC WR, SEs)
      -> arena_hard_generate  -> arena_hard_judge     (BT score, 95% bootstrap CI)
    table artifacts -> pairwise[NAME]                 (win rate + SE of one column over another)

The DAG only, as `flows.sgpo`: every stage is a cached Prefect task returning an ArtifactRef,
keyed by content hashes + its config + prompt versions (never the run id), with results
JSON-serialised in `<store>/_prefect`; a second run reuses every finished stage, a changed judge
setting re-judges without regenerating, `force` names stages to recompute (their paid judge calls
still come from the journal). Judge endpoints without `base_url` talk to the embedded local
OpenAI-compatible server (over the evaluated model unless `embedded_llm.model` says otherwise).
Results go to a Prefect table artifact, the MLflow run (one parent run, a nested run per stage)
and the returned `EvaluationReport`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel, Field

from artifacts.refs import ArtifactRef
from flows.runner import StageReport, StageRunner, with_endpoint
from sgpo.eval_config import EvalModelSpec, EvaluationConfig, load_evaluation_config
from tasks.alpaca_eval import alpaca_eval_generate_task, alpaca_eval_judge_task
from tasks.arena_hard import arena_hard_generate_task, arena_hard_judge_task
from tasks.common import StageContext
from tasks.pairwise import pairwise_task

EVAL_STAGES = ("base_model", "alpaca_eval_generate", "alpaca_eval_judge", "arena_hard_generate", "arena_hard_judge",
               "pairwise")
LARGE_FILE_BYTES = 256 * 2**20
EDGE_BYTES = 8 * 2**20

__all__ = ["EVAL_STAGES", "EvaluationReport", "evaluate", "load_evaluation_config", "resolve_artifact", "resolve_model",
           "result_rows", "summary_lines"]


class EvaluationReport(BaseModel):
    flow_run_id: str | None = None
    mlflow_run_id: str | None = None
    model: str = Field(description="URI of the evaluated model (hf://ID or a local dir for non-store models)")
    model_name: str
    stages: list[StageReport]
    alpaca_eval: dict[str, Any] | None = Field(None, description="The alpaca_eval_judge report (WR, LC, SEs, ...)")
    arena_hard: dict[str, Any] | None = Field(None, description="The arena_hard_judge report (score, CI, ...)")
    pairwise: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per comparison name: its report")


# --------------------------------------------------------------------------------------------------
# Inputs: the model and table artifacts
# --------------------------------------------------------------------------------------------------
def resolve_artifact(uri: str, storage_options: dict | None = None) -> ArtifactRef:
    """The ArtifactRef of a finished artifact from its folder URI (read from its manifest)."""
    import fsspec

    from artifacts.store import MANIFEST, normalize_url

    url = normalize_url(uri)
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = f"{root.rstrip('/')}/{MANIFEST}"
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri} is not a finished artifact (no {MANIFEST} in it)")
    with fs.open(path, "rb") as f:
        return ArtifactRef.model_validate(json.loads(f.read())["ref"])


def dir_content_hash(path: Path) -> str:
    """Content hash of a local checkpoint dir: every file's sha256 (files over 256 MiB: size + first and
    last 8 MiB, so a 15 GB checkpoint is not read in full on every run)."""
    entries = {}
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h = hashlib.sha256()
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size <= LARGE_FILE_BYTES:
                for chunk in iter(lambda: f.read(2**20), b""):
                    h.update(chunk)
            else:
                h.update(str(size).encode())
                h.update(f.read(EDGE_BYTES))
                f.seek(size - EDGE_BYTES)
                h.update(f.read(EDGE_BYTES))
        entries[p.relative_to(path).as_posix()] = h.hexdigest()
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def resolve_model(spec: EvalModelSpec, run: Any | None = None, storage_options: dict | None = None) -> tuple[ArtifactRef, str]:
    """(ArtifactRef, display name) of the model to evaluate.

    'tiny' runs the `base_model` stage (needs `run`); an artifact URI is read from its manifest; a
    local dir is referenced by content hash; anything else is a hub id (name + revision)."""
    from artifacts.store import hub_model_ref

    if spec.path == "tiny":
        from sgpo.config import ModelSpec
        from tasks.base_model import base_model_task

        if run is None:
            raise ValueError("model.path=tiny builds the tiny model with the base_model stage: pass the stage runner")
        return run("base_model", base_model_task, spec=ModelSpec(name_or_path="tiny")), spec.name or "sgpo-tiny"
    if "://" in spec.path and not spec.path.startswith("hf://"):
        ref = resolve_artifact(spec.path, storage_options)
        if ref.kind not in ("model", "hub_model"):
            raise ValueError(f"model.path {spec.path!r} is a {ref.kind} artifact, not a model")
        return ref, spec.name or f"{ref.stage}-{ref.short}"
    local = Path(spec.path).expanduser()
    if local.is_dir():
        digest = dir_content_hash(local.resolve())
        ref = ArtifactRef(uri=f"hf://{local.resolve()}", kind="hub_model", stage="model", cache_key=digest,
                          content_hash=digest, summary={"local_dir": str(local.resolve())})
        return ref, spec.name or local.resolve().name
    hub_id = spec.path.removeprefix("hf://")
    return hub_model_ref(hub_id, spec.revision), spec.name or hub_id.rstrip("/").split("/")[-1]


# --------------------------------------------------------------------------------------------------
# Running stages
# --------------------------------------------------------------------------------------------------
def _needs_embedded_judge(cfg: EvaluationConfig) -> bool:
    sections = [s for s in (cfg.alpaca_eval, cfg.arena_hard) if s.enabled] + list(cfg.pairwise)
    return any(not s.endpoint.base_url for s in sections)


# --------------------------------------------------------------------------------------------------
# The flow
# --------------------------------------------------------------------------------------------------
@flow(name="sgpo-evaluate", description="AlpacaEval 2.0, Arena-Hard v0.1 and pairwise win rates of one model",
      result_serializer="json")
def evaluate(config: EvaluationConfig | None = None, force: list[str] | None = None) -> EvaluationReport:
    """Evaluate `config.model` on the configured benchmarks; `force` lists stages (or `pairwise[NAME]`) to recompute."""
    from sgpo.tracking import pipeline_run

    cfg = config or load_evaluation_config()
    unknown = [s for s in force or [] if s.split("[")[0] not in EVAL_STAGES]
    if unknown:
        raise ValueError(f"force: unknown stage(s) {unknown}; stages: {', '.join(EVAL_STAGES)}")
    run_ctx = get_run_context()
    run_id = str(run_ctx.flow_run.id) if getattr(run_ctx, "flow_run", None) else None
    tags = {"prefect.flow_run_id": str(run_id), "sgpo.kind": "evaluation"}
    with pipeline_run(cfg.tracking, cfg.name, tags=tags) as tracking:
        ctx = StageContext(store=cfg.store, tracking=tracking, run_id=run_id, trust_remote_code=cfg.model.trust_remote_code)
        report = _evaluate(cfg, StageRunner(ctx, force or [], width=24))
        if tracking:
            _log_parent_metrics(tracking, report)
    report.flow_run_id, report.mlflow_run_id = run_id, tracking.parent_run_id if tracking else None
    return report


def _evaluate(cfg: EvaluationConfig, run: StageRunner) -> EvaluationReport:
    from sgpo.llm.embedded import EMBEDDED_MODEL_NAME, embedded_llm

    model, model_name = resolve_model(cfg.model, run, cfg.store.storage_options)
    store = run.ctx.open_store()
    tables = {p.name: resolve_artifact(p.table, cfg.store.storage_options) for p in cfg.pairwise}  # fail fast
    out = EvaluationReport(model=model.uri, model_name=model_name, stages=[])
    with contextlib.ExitStack() as stack:
        base_url = None
        if _needs_embedded_judge(cfg):
            judge_dir = store.model_dir(model) if cfg.embedded_llm.model == "base" else cfg.embedded_llm.model
            base_url = stack.enter_context(embedded_llm(judge_dir, max_new_tokens_cap=cfg.embedded_llm.max_new_tokens_cap))
            print(f"[sgpo] embedded judge LLM at {base_url} (model {judge_dir})", flush=True)
        if cfg.alpaca_eval.enabled:
            answers = run("alpaca_eval_generate", alpaca_eval_generate_task, model=model, cfg=cfg.alpaca_eval,
                          model_name=model_name)
            judged = run("alpaca_eval_judge", alpaca_eval_judge_task, answers=answers,
                         cfg=with_endpoint(cfg.alpaca_eval, base_url, EMBEDDED_MODEL_NAME))
            out.alpaca_eval = {**judged.summary, "annotations_uri": judged.uri}
        if cfg.arena_hard.enabled:
            answers = run("arena_hard_generate", arena_hard_generate_task, model=model, cfg=cfg.arena_hard,
                          model_name=model_name)
            judged = run("arena_hard_judge", arena_hard_judge_task, answers=answers,
                         cfg=with_endpoint(cfg.arena_hard, base_url, EMBEDDED_MODEL_NAME))
            out.arena_hard = {**judged.summary, "judgments_uri": judged.uri}
        for p in cfg.pairwise:
            judged = run(f"pairwise[{p.name}]", pairwise_task, table=tables[p.name],
                         cfg=with_endpoint(p, base_url, EMBEDDED_MODEL_NAME))
            out.pairwise[p.name] = {**judged.summary, "annotations_uri": judged.uri}
    out.stages = list(run.reports)
    _publish_ui_artifacts(out)
    return out


def result_rows(report: EvaluationReport) -> list[dict[str, Any]]:
    """One row per benchmark / comparison: the headline numbers (for the UI table and the CLI)."""
    rows = []
    if a := report.alpaca_eval:
        rows.append({"benchmark": "AlpacaEval 2.0", "model": a.get("model"), "vs": a.get("baseline"),
                     "score": a.get("win_rate"), "se_or_ci": a.get("standard_error"),
                     "lc_win_rate": a.get("lc_win_rate"), "lc_se": a.get("lc_standard_error"),
                     "n": a.get("n_labelled"), "note": a.get("lc_note") or a.get("difficulty_source"),
                     "report": a.get("report_uri")})
    if h := report.arena_hard:
        rows.append({"benchmark": "Arena-Hard v0.1", "model": h.get("model"), "vs": h.get("baseline"),
                     "score": h.get("score"), "se_or_ci": h.get("ci"), "lc_win_rate": None, "lc_se": None,
                     "n": h.get("n_questions"), "note": h.get("score_note"), "report": h.get("report_uri")})
    for name, p in report.pairwise.items():
        rows.append({"benchmark": f"pairwise {name}", "model": p.get("model_column"), "vs": p.get("baseline_column"),
                     "score": p.get("win_rate"), "se_or_ci": p.get("standard_error"), "lc_win_rate": None,
                     "lc_se": None, "n": p.get("n_labelled"), "note": None, "report": p.get("report_uri")})
    return rows


def summary_lines(report: EvaluationReport) -> list[str]:
    """Human-readable headline lines (for the `sgpo evaluate` command)."""

    def num(v: Any, fmt: str = "{:.2f}") -> str:
        return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"

    lines = []
    if a := report.alpaca_eval:
        lc = (f"LC {num(a.get('lc_win_rate'))} (SE {num(a.get('lc_standard_error'))}, difficulty {a.get('difficulty_source')}"
              f"{', regularised' if a.get('lc_regularized') else ''})" if a.get("lc_win_rate") is not None
              else f"no LC ({a.get('lc_note')})")
        lines.append(f"[sgpo] AlpacaEval 2.0: WR {num(a.get('win_rate'))} (SE {num(a.get('standard_error'))}), "
                     f"discrete {num(a.get('discrete_win_rate'))}, {lc}; {a.get('n_labelled')} of {a.get('n')} judged, "
                     f"avg length {a.get('avg_length')} vs {a.get('baseline')}; {a.get('report_uri')}")
    if h := report.arena_hard:
        score = (f"score {num(h.get('score'))} {h.get('ci') or ''} (95% CI {num(h.get('ci_low'))}-{num(h.get('ci_high'))})"
                 if h.get("score") is not None else f"no score ({h.get('score_note')})")
        lines.append(f"[sgpo] Arena-Hard v0.1: {score} vs {h.get('baseline')}, {h.get('n_questions')} questions, "
                     f"{h.get('n_games_without_label')} games without a label; {h.get('report_uri')}")
    for name, p in report.pairwise.items():
        lines.append(f"[sgpo] pairwise {name}: {p.get('model_column')} beats {p.get('baseline_column')} in "
                     f"{num(p.get('win_rate'))}% (SE {num(p.get('standard_error'))}) of {p.get('n_labelled')} judged pairs")
    return lines


def _publish_ui_artifacts(report: EvaluationReport) -> None:
    """The stages and the headline results in the Prefect UI's Artifacts tab."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key="sgpo-eval-stages",
        table=[{"stage": r.stage, "status": r.status, "seconds": r.seconds, "uri": r.uri} for r in report.stages],
        description=f"Stages of this evaluation of {report.model_name}: ran or cached, duration, artifact",
    )
    create_table_artifact(
        key="sgpo-eval-results",
        table=[{k: ("" if v is None else v) for k, v in row.items()} for row in result_rows(report)],
        description=f"{report.model_name}: AlpacaEval 2.0 WR/LC (SE), Arena-Hard score (95% CI), pairwise win rates",
    )


def parent_metrics(report: EvaluationReport) -> dict[str, float]:
    """Headline numbers as MLflow metrics of the evaluation's parent run."""
    out: dict[str, float] = {}

    def put(prefix: str, d: dict[str, Any] | None, keys: tuple[str, ...]) -> None:
        for k in keys:
            v = (d or {}).get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}.{k}"] = float(v)

    put("alpaca_eval", report.alpaca_eval, ("win_rate", "standard_error", "discrete_win_rate", "lc_win_rate",
                                            "lc_standard_error", "avg_length", "n_labelled"))
    put("arena_hard", report.arena_hard, ("score", "ci_low", "ci_high", "n_questions"))
    for name, p in report.pairwise.items():
        put(f"pairwise.{name}", p, ("win_rate", "standard_error", "discrete_win_rate", "n_labelled"))
    return out


def _log_parent_metrics(tracking: Any, report: EvaluationReport) -> None:
    from mlflow.tracking import MlflowClient

    from sgpo.tracking import StageTracker

    StageTracker(MlflowClient(tracking_uri=tracking.uri), tracking.parent_run_id).log_metrics(parent_metrics(report))
