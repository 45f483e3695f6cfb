"""AlpacaEval 2.0 stages: `alpaca_eval_generate` (the policy's answers) and `alpaca_eval_judge`.

Protocol: the official `weighted_alpaca_eval_gpt4_turbo` annotator of tatsu-lab/alpaca_eval.

* Data: the AlpacaEval set (805 instructions with gpt4_1106_preview's baseline outputs); row
  positions are kept (`index`), since the length-controlled GLM looks the instruction difficulty up
  by row of the official set.
* Judge prompt: `sgpo/prompts/alpaca_eval_clf_v1.txt` (the official `alpaca_eval_clf.txt`, verbatim),
  filled like upstream `utils.make_prompts` (each placeholder replaced once, in order) and split into
  system + user messages like `utils.prompt_to_chatml`.
* Order: upstream shows the two outputs in a random order per instruction,
  `random.Random("is_switched_outputs" + instruction + "0")`; :func:`official_model_first` gives that
  very order, so our annotations match the published ones position for position.
* Answer: one token (`max_tokens=1`, temperature 1, `logprobs`, `top_logprobs=5`); the preference
  is read from the top logprobs of "m" (output shown first) and "M" (shown second) with
  :func:`preference_from_top_logprobs` and mapped back to the canonical order (output_1 = baseline,
  output_2 = model; 1 = baseline better, 2 = model better). Identical outputs get 1.5 without a
  call, as upstream. A row whose top logprobs hold neither token has no preference (upstream: NaN,
  dropped from the win rate).
* Metrics: raw and discrete win rates with standard errors (:func:`win_rate_metrics`), LC win rate
  (:func:`length_controlled_win_rate`) with the configured instruction difficulty and gamed-baseline
  rows; the report says which sources were used and whether the GLM was regularised.

Every judge call goes through `sgpo.llm.client.call_all`. The journal is keyed by the judge
settings only (judge model, prompt version, sampling of the judge, order seed), not by the metric
settings or the row selection, so recomputing LC with another difficulty table, or judging more
rows, never pays twice for a judgment already made.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from prefect import task

from artifacts.hashing import sha256_bytes, sha256_text, stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import DatasetSpec, cache_payload
from sgpo.eval_config import AlpacaEvalConfig
from sgpo.generation import answer_each
from sgpo.llm.client import CallRecord, CallSummary, ChatRequest, EndpointConfig
from sgpo.prompts import load_prompt
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE_GENERATE = "alpaca_eval_generate"
STAGE_JUDGE = "alpaca_eval_judge"
CODE_VERSION = "1"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
DEFAULT_BASELINE_NAME = "gpt4_1106_preview"
LC_MIN_ROWS = 5  # the GLM picks its regularisation by 5-fold grouped CV


class BenchmarkDataError(ValueError):
    """Benchmark data that cannot be used as configured; the message names the source and column."""


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def source_fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    """What identifies a data source in a cache key: a local file by content, a remote one by name + revision."""
    from tasks.prepare import local_path

    path = local_path(spec)
    if path is not None:
        return {"file_sha256": sha256_bytes(path.read_bytes())}
    return {"source": spec.path, "revision": spec.revision, "name": spec.name, "split": spec.split}


def load_records(spec: DatasetSpec) -> list[dict[str, Any]]:
    """All rows of a source as dicts, through the pipeline's real loader (`datasets`, hub or local)."""
    from pathlib import PurePosixPath

    from tasks.prepare import FILE_FORMATS, DatasetError, load_raw

    if spec.path.startswith(("http://", "https://")) and PurePosixPath(spec.path.split("?")[0]).suffix in FILE_FORMATS:
        from datasets import load_dataset  # one file at a URL (e.g. a raw GitHub file)

        fmt = FILE_FORMATS[PurePosixPath(spec.path.split("?")[0]).suffix]
        try:
            return load_dataset(fmt, data_files={spec.split: spec.path}, split=spec.split).to_list()
        except Exception as e:
            raise DatasetError(f"could not load {spec.path!r}: {type(e).__name__}: {e}") from e
    return load_raw(spec).to_list()


def _select(n: int, *, shuffle_seed: int | None, limits: list[int | None]) -> list[int]:
    order = list(range(n))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    caps = [m for m in limits if m is not None]
    return order[: min(caps)] if caps else order


def load_alpaca_eval_rows(cfg: AlpacaEvalConfig) -> tuple[list[dict[str, Any]], int]:
    """(selected rows with their `index` in the full set, number of rows in the full set)."""
    spec = cfg.data
    records = load_records(spec)
    if not records:
        raise BenchmarkDataError(f"AlpacaEval data {spec.path!r} is empty")
    columns = list(records[0])
    instr_col = spec.prompt_column or "instruction"
    out_col = spec.response_column or "output"
    for col, role in ((instr_col, "prompt_column"), (out_col, "response_column")):
        if col not in columns:
            raise BenchmarkDataError(
                f"AlpacaEval data {spec.path!r} has no column {col!r} (alpaca_eval.data.{role}); columns: {columns}"
            )
    rows = []
    for i in _select(len(records), shuffle_seed=spec.shuffle_seed, limits=[cfg.max_rows, spec.max_rows]):
        r = records[i]
        instruction, baseline = r.get(instr_col), r.get(out_col)
        if not isinstance(instruction, str) or not isinstance(baseline, str):
            raise BenchmarkDataError(f"AlpacaEval data {spec.path!r}: row {i} lacks a string {instr_col!r} / {out_col!r}")
        rows.append({
            "index": i,
            "dataset": str(r.get("dataset")) if r.get("dataset") is not None else None,
            "instruction": instruction,
            "baseline_output": baseline,
            "baseline_generator": cfg.baseline_name or str(r.get("generator") or DEFAULT_BASELINE_NAME),
        })
    return rows, len(records)


# --------------------------------------------------------------------------------------------------
# The official judge prompt
# --------------------------------------------------------------------------------------------------
def render_judge_prompt(template: str, **values: str) -> str:
    """Upstream `utils.make_prompts` for batch_size 1: each `{key}` placeholder found in the template
    (regex ``{([^ \\s]+?)}``, in order of first appearance) is replaced once by its value.
    Braces in the values, and the template's literal JSON-like braces, are left as they are."""
    import re
    from collections import Counter

    keys = list(Counter(re.findall(r"{([^ \s]+?)}", template)))
    missing = [k for k in keys if k not in values]
    if missing:
        raise KeyError(f"judge prompt needs values for {missing}")
    out = template
    for k in keys:
        out = out.replace("{" + k + "}", str(values[k]), 1)
    return out


def prompt_to_chatml(prompt: str, start_token: str = "<|im_start|>", end_token: str = "<|im_end|>") -> list[dict[str, str]]:
    """Upstream `utils.prompt_to_chatml`: `<|im_start|>ROLE\\nCONTENT<|im_end|>` blocks -> chat messages
    (content stripped). Only plain roles are supported (upstream's `system name=...` is not used by
    the AlpacaEval 2.0 prompt)."""
    prompt = prompt.strip()
    if not (prompt.startswith(start_token) and prompt.endswith(end_token)):
        raise ValueError("a chatml prompt must start with <|im_start|> and end with <|im_end|>")
    messages = []
    for part in prompt.split(start_token)[1:]:
        role, _, rest = part.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split(end_token, 1)[0].strip()})
    return messages


@dataclass(frozen=True)
class PairJudge:
    """The AlpacaEval-style pairwise judge: which endpoint, prompt and one-token sampling."""

    endpoint: EndpointConfig
    prompt: str
    top_logprobs: int
    temperature: float
    order_seed: int

    @classmethod
    def from_config(cls, cfg: Any) -> PairJudge:
        return cls(endpoint=cfg.endpoint, prompt=cfg.prompt, top_logprobs=cfg.top_logprobs,
                   temperature=cfg.judge_temperature, order_seed=cfg.order_seed)

    @property
    def prompt_version(self) -> str:
        return load_prompt(self.prompt).version

    def payload(self) -> dict[str, Any]:
        """Everything that determines the judge's answers (its journal key and part of the stage key)."""
        return {"model": self.endpoint.model, "max_invalid_retries": self.endpoint.max_invalid_retries,
                "prompt": self.prompt_version, "top_logprobs": self.top_logprobs, "temperature": self.temperature,
                "top_p": 1.0, "max_tokens": 1, "order_seed": self.order_seed}

    def journal_url(self, store: Any, stage: str, code_version: str) -> str:
        calls_key = stage_cache_key(f"{stage}/calls", code_version=code_version, config=self.payload(), inputs={})
        return store.work_url(stage, calls_key) + "/calls"

    def request(self, instruction: str, baseline: str, model: str) -> tuple[ChatRequest, bool]:
        """The judge request for one pair, and whether the model's output is shown first."""
        from sgpo.metrics.alpaca_eval import official_model_first

        model_first = official_model_first(instruction, self.order_seed)
        shown_1, shown_2 = (model, baseline) if model_first else (baseline, model)
        text = render_judge_prompt(load_prompt(self.prompt).text, instruction=instruction, output_1=shown_1, output_2=shown_2)
        # The row key is the pair's content: the same pair in another selection of rows is the same call.
        key = sha256_text(json.dumps([instruction, shown_1, shown_2]))[:24]
        req = ChatRequest(key=key, messages=prompt_to_chatml(text), temperature=self.temperature, top_p=1.0,
                          max_tokens=1, seed=None, top_logprobs=self.top_logprobs)
        return req, model_first


def raw_completion(record: CallRecord) -> str | None:
    """The judge's choice as upstream stores it in `raw_completion` (the OpenAI choice + text + total_tokens), JSON."""
    if not record.raw_response:
        return None
    try:
        body = json.loads(record.raw_response)
    except ValueError:
        return record.raw_response
    if not isinstance(body, dict) or not body.get("choices"):
        return json.dumps(body)
    choice = dict(body["choices"][0])
    choice["text"] = (choice.get("message") or {}).get("content")
    choice["total_tokens"] = (body.get("usage") or {}).get("total_tokens")
    return json.dumps(choice, ensure_ascii=False)


def judge_pairs(
    pairs: list[tuple[str, str, str]],
    judge: PairJudge,
    *,
    journal_url: str,
    namespace: str,
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], CallSummary | None]:
    """Judge `(instruction, baseline, model)` pairs; one dict per pair with `preference` (1 = baseline
    better, 2 = model better, None = no label), `is_switched_outputs` (model shown first),
    `raw_completion`, `judge_status` and `price_per_example`."""
    from sgpo.llm.client import call_all
    from sgpo.metrics.alpaca_eval import preference_from_top_logprobs

    out: list[dict[str, Any] | None] = [None] * len(pairs)
    reqs, where, orders = [], [], []
    for i, (instruction, baseline, model) in enumerate(pairs):
        req, model_first = judge.request(instruction, baseline, model)
        if baseline == model:  # upstream: identical outputs are a draw, not sent to the judge
            out[i] = {"preference": 1.5, "is_switched_outputs": model_first, "raw_completion": None,
                      "judge_status": "identical_outputs", "price_per_example": 0.0}
            continue
        reqs.append(req)
        where.append(i)
        orders.append(model_first)
    summary = None
    if reqs:
        summary = call_all(reqs, judge.endpoint, journal_url=journal_url, namespace=namespace,
                           storage_options=storage_options, allow_truncated=True,  # max_tokens=1 by design
                           progress=progress)
        ep = judge.endpoint
        for i, model_first, rec in zip(where, orders, summary.records):
            top = rec.top_logprobs[0]["top_logprobs"] if rec.status == "ok" and rec.top_logprobs else []
            pref = preference_from_top_logprobs(top, model_first=model_first) if top else None
            price = None
            if ep.price_per_1m_prompt_tokens is not None and ep.price_per_1m_completion_tokens is not None:
                price = (rec.prompt_tokens * ep.price_per_1m_prompt_tokens
                         + rec.completion_tokens * ep.price_per_1m_completion_tokens) / 1e6
            status = "ok" if rec.status == "ok" and pref is not None else (rec.reason or "no_label_token")
            out[i] = {"preference": pref, "is_switched_outputs": model_first, "raw_completion": raw_completion(rec),
                      "judge_status": status, "price_per_example": price}
    return [o for o in out if o is not None], summary


def annotation_schema():
    """Parquet schema of the annotations: the official columns first, then ours."""
    import pyarrow as pa

    return pa.schema([
        ("instruction", pa.string()), ("output_1", pa.string()), ("generator_1", pa.string()),
        ("dataset", pa.string()), ("output_2", pa.string()), ("generator_2", pa.string()),
        ("annotator", pa.string()), ("preference", pa.float64()), ("price_per_example", pa.float64()),
        ("raw_completion", pa.string()), ("index", pa.int64()), ("is_switched_outputs", pa.bool_()),
        ("judge_model", pa.string()), ("judge_status", pa.string()),
    ])


def call_totals(summary: CallSummary | None) -> dict[str, Any]:
    if summary is None:
        return {"judge_calls": 0, "from_journal": 0, "sent": 0, "prompt_tokens": 0, "completion_tokens": 0,
                "cost_usd": None, "invalid_reasons": {}}
    return {"judge_calls": len(summary.records), "from_journal": summary.n_from_journal, "sent": summary.n_sent,
            "prompt_tokens": summary.prompt_tokens, "completion_tokens": summary.completion_tokens,
            "cost_usd": summary.cost_usd, "invalid_reasons": dict(summary.invalid_reasons)}


# --------------------------------------------------------------------------------------------------
# LC inputs
# --------------------------------------------------------------------------------------------------
def resolve_instruction_difficulty(source: str):
    """(difficulty Series or None, description of its source). 'hub' downloads the official file."""
    from sgpo.metrics import alpaca_eval as ae

    if source.lower() == "none":
        return None, None
    if source.lower() == "hub":
        try:
            return ae.download_instruction_difficulty(), f"hub:{ae.HUB_REPO_ID}/instruction_difficulty.csv"
        except Exception as e:
            raise BenchmarkDataError(
                f"alpaca_eval.instruction_difficulty=hub: could not download {ae.HUB_REPO_ID}/instruction_difficulty.csv "
                f"({type(e).__name__}: {e}); set a local CSV path, or 'none' to skip the LC win rate"
            ) from e
    try:
        return ae.load_instruction_difficulty(source), f"file:{source}"
    except (OSError, ValueError) as e:
        raise BenchmarkDataError(f"alpaca_eval.instruction_difficulty: cannot read {source!r}: {e}") from e


def resolve_gamed_annotations(source: str):
    """(upstream df_gamed rows or None, description of the source)."""
    import pandas as pd

    from sgpo.metrics import alpaca_eval as ae

    if source.lower() == "none":
        return None, None
    if source.lower() == "hub":
        try:
            return ae.download_gamed_annotations(), f"hub:{ae.HUB_REPO_ID}/df_gamed.csv"
        except Exception as e:
            raise BenchmarkDataError(
                f"alpaca_eval.gamed_annotations=hub: could not download {ae.HUB_REPO_ID}/df_gamed.csv "
                f"({type(e).__name__}: {e}); set a local CSV path, or 'none' for the unregularised GLM"
            ) from e
    try:
        return pd.read_csv(source).drop(columns=["model"], errors="ignore"), f"file:{source}"
    except (OSError, ValueError) as e:
        raise BenchmarkDataError(f"alpaca_eval.gamed_annotations: cannot read {source!r}: {e}") from e


def alpaca_eval_metrics(annotations: list[dict[str, Any]], difficulty, gamed, *, n_source_rows: int | None) -> dict[str, Any]:
    """WR, discrete WR, SEs, counts, avg lengths and (when possible) the LC win rate, JSON-ready."""
    import math

    import pandas as pd

    from sgpo.metrics.alpaca_eval import length_controlled_win_rate, win_rate_metrics

    out: dict[str, Any] = {"n": len(annotations)}
    if not annotations:
        out.update(win_rate=None, standard_error=None, discrete_win_rate=None, n_total=0, lc_win_rate=None,
                   lc_standard_error=None, lc_regularized=None, lc_weights=None, lc_note="no annotations")
        return out
    df = pd.DataFrame(annotations).set_index("index", drop=False)  # the LC GLM looks difficulty up by row
    df.index.name = None
    out.update(win_rate_metrics(df["preference"], lengths_model=df["output_2"], lengths_baseline=df["output_1"]))
    out["n_labelled"] = out.pop("n_total", 0)
    lc: dict[str, Any] = {"lc_win_rate": None, "lc_standard_error": None, "lc_regularized": None, "lc_weights": None}
    note = None
    if difficulty is None:
        note = "LC not computed: alpaca_eval.instruction_difficulty is 'none'"
    elif n_source_rows is not None and n_source_rows != len(difficulty):
        note = (f"LC not computed: the data has {n_source_rows} instructions but the difficulty table {len(difficulty)}; "
                "the LC GLM needs the official 805-instruction AlpacaEval set")
    elif out["n_labelled"] < LC_MIN_ROWS:
        note = f"LC not computed: {out['n_labelled']} labelled rows, the GLM's 5-fold CV needs at least {LC_MIN_ROWS}"
    else:
        try:
            res = length_controlled_win_rate(df, difficulty, gamed_annotations=gamed)
            lc = {"lc_win_rate": res["lc_win_rate"], "lc_standard_error": res["lc_standard_error"],
                  "lc_regularized": res["regularized"], "lc_weights": res["weights"]}
            if not res["regularized"]:
                note = ("LC from the unregularised GLM (no gamed-baseline rows): not the leaderboard's LC, "
                        "typically ~2 points higher; set alpaca_eval.gamed_annotations=hub for the official one")
        except ValueError as e:  # e.g. a degenerate fit on a handful of rows
            note = f"LC not computed: {e}"
    out.update(lc)
    out["lc_note"] = note
    for k, v in list(out.items()):
        if isinstance(v, float) and math.isnan(v):
            out[k] = None
    return out


# --------------------------------------------------------------------------------------------------
# Stage: generate
# --------------------------------------------------------------------------------------------------
def generate_payload(cfg: AlpacaEvalConfig, model_name: str) -> dict[str, Any]:
    return {"data": cache_payload(cfg.data), "max_rows": cfg.max_rows, "baseline_name": cfg.baseline_name,
            "sampling": cache_payload(cfg.sampling), "model_name": model_name}


def generate_cache_key(model: ArtifactRef, cfg: AlpacaEvalConfig, model_name: str) -> str:
    return stage_cache_key(STAGE_GENERATE, code_version=CODE_VERSION, config=generate_payload(cfg, model_name),
                           inputs={"model": model.content_hash, "data": sha256_text(json.dumps(source_fingerprint(cfg.data), sort_keys=True))})


def run_alpaca_eval_generate(model: ArtifactRef, cfg: AlpacaEvalConfig, ctx: StageContext, *, model_name: str) -> ArtifactRef:
    import pyarrow as pa

    store = ctx.open_store()
    key = generate_cache_key(model, cfg, model_name)
    if (ref := ctx.reuse(store, STAGE_GENERATE, key)) is not None:
        return ref
    log = stage_logger(STAGE_GENERATE)
    rows, n_source = load_alpaca_eval_rows(cfg)
    log.info("alpaca_eval: %s answers %d of %d instructions", model_name, len(rows), n_source)
    with ctx.tracked(STAGE_GENERATE, generate_payload(cfg, model_name)) as tracker:
        answers = answer_each(store.model_dir(model), [r["instruction"] for r in rows], cfg.sampling,
                                   trust_remote_code=ctx.trust_remote_code)
        table = [{**r, "output": a.text, "generator": model_name, "finish_reason": a.finish_reason,
                  "completion_tokens": a.completion_tokens} for r, a in zip(rows, answers)]
        summary = {"n": len(table), "n_source_rows": n_source,
                   "avg_length": sum(len(t["output"]) for t in table) / max(len(table), 1),
                   "truncated": sum(t["finish_reason"] == "length" for t in table)}
        tracker.log_metrics(summary)
        ref = store.publish_table(
            STAGE_GENERATE, key, pa.Table.from_pylist(table),
            manifest=manifest(STAGE_GENERATE, CODE_VERSION, generate_payload(cfg, model_name), {"model": model},
                              seeds={"sampling": cfg.sampling.seed},
                              extra={"data_source": source_fingerprint(cfg.data)}),
            summary=summary, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


# --------------------------------------------------------------------------------------------------
# Stage: judge
# --------------------------------------------------------------------------------------------------
def judge_payload(cfg: AlpacaEvalConfig) -> dict[str, Any]:
    return {"judge": PairJudge.from_config(cfg).payload(), "annotator": ANNOTATOR,
            "instruction_difficulty": cfg.instruction_difficulty, "gamed_annotations": cfg.gamed_annotations}


def judge_cache_key(answers: ArtifactRef, cfg: AlpacaEvalConfig) -> str:
    judge = PairJudge.from_config(cfg)
    return stage_cache_key(STAGE_JUDGE, code_version=CODE_VERSION, config=judge_payload(cfg),
                           inputs={"answers": answers.content_hash}, prompts={"judge": judge.prompt_version})


def run_alpaca_eval_judge(answers: ArtifactRef, cfg: AlpacaEvalConfig, ctx: StageContext) -> ArtifactRef:
    import pyarrow as pa

    from tasks.annotate import ExternalLLMNotConfigured

    if not cfg.endpoint.base_url:
        raise ExternalLLMNotConfigured("alpaca_eval.endpoint.base_url is not set: configure the judge LLM")
    store = ctx.open_store()
    key = judge_cache_key(answers, cfg)
    if (ref := ctx.reuse(store, STAGE_JUDGE, key)) is not None:
        return ref
    log = stage_logger(STAGE_JUDGE)
    # LC inputs first: a missing difficulty table must fail before any judge call is paid for.
    difficulty, difficulty_source = resolve_instruction_difficulty(cfg.instruction_difficulty)
    gamed, gamed_source = resolve_gamed_annotations(cfg.gamed_annotations) if difficulty is not None else (None, None)
    rows = store.read_table(answers).to_pylist()
    judge = PairJudge.from_config(cfg)
    with ctx.tracked(STAGE_JUDGE, judge_payload(cfg)) as tracker:
        results, calls = judge_pairs(
            [(r["instruction"], r["baseline_output"], r["output"]) for r in rows], judge,
            journal_url=judge.journal_url(store, STAGE_JUDGE, CODE_VERSION),
            namespace=f"{STAGE_JUDGE}:{CODE_VERSION}:{judge.prompt_version}", storage_options=store.storage_options,
            progress=lambda done, total: log.info("alpaca_eval: %d/%d judgments", done, total)
            if done == total or done % 100 == 0 else None,
        )
        table = [{
            "instruction": r["instruction"], "output_1": r["baseline_output"], "generator_1": r["baseline_generator"],
            "dataset": r["dataset"], "output_2": r["output"], "generator_2": r["generator"], "annotator": ANNOTATOR,
            "preference": res["preference"], "price_per_example": res["price_per_example"],
            "raw_completion": res["raw_completion"], "index": r["index"],
            "is_switched_outputs": res["is_switched_outputs"], "judge_model": cfg.endpoint.model,
            "judge_status": res["judge_status"],
        } for r, res in zip(rows, results)]
        n_source = (answers.summary or {}).get("n_source_rows")
        metrics = alpaca_eval_metrics(table, difficulty, gamed, n_source_rows=n_source)
        report = {
            "benchmark": "alpaca_eval_2", "annotator": ANNOTATOR, "judge_model": cfg.endpoint.model,
            "model": rows[0]["generator"] if rows else None, "baseline": rows[0]["baseline_generator"] if rows else None,
            **metrics, "difficulty_source": difficulty_source, "gamed_source": gamed_source,
            "prompt_version": judge.prompt_version, **call_totals(calls),
        }
        log.info("alpaca_eval: WR %s, LC %s over %d labelled of %d (%s)", report["win_rate"], report["lc_win_rate"],
                 report["n_labelled"], report["n"], report["lc_note"] or "LC ok")
        tracker.log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        report_uri = store.publish_json(STAGE_JUDGE, key, "report.json", report)  # before the manifest
        summary = {k: v for k, v in report.items() if k != "lc_weights"} | {"report_uri": report_uri}
        ref = store.publish_table(
            STAGE_JUDGE, key, pa.Table.from_pylist(table, schema=annotation_schema()),
            manifest=manifest(STAGE_JUDGE, CODE_VERSION, judge_payload(cfg), {"answers": answers},
                              prompts={"judge": judge.prompt_version}, seeds={"order": cfg.order_seed},
                              extra={"report": report_uri}),
            summary=summary, produced_by=ctx.run_id,
        )
        tracker.set_tags({"sgpo.artifact_uri": ref.uri})
        return ref


# --------------------------------------------------------------------------------------------------
# Prefect tasks
# --------------------------------------------------------------------------------------------------
@task(name=STAGE_GENERATE, cache_key_fn=lambda _c, p: generate_cache_key(p["model"], p["cfg"], p["model_name"]),
      **TASK_DEFAULTS)
def alpaca_eval_generate_task(model: ArtifactRef, cfg: AlpacaEvalConfig, ctx: StageContext, model_name: str) -> ArtifactRef:
    return run_alpaca_eval_generate(model, cfg, ctx, model_name=model_name)


# Retries re-enter the stage, which resumes from the journal: no finished judgment is repaid.
@task(name=STAGE_JUDGE, cache_key_fn=lambda _c, p: judge_cache_key(p["answers"], p["cfg"]), retries=1,
      retry_delay_seconds=30, **TASK_DEFAULTS)
def alpaca_eval_judge_task(answers: ArtifactRef, cfg: AlpacaEvalConfig, ctx: StageContext) -> ArtifactRef:
    return run_alpaca_eval_judge(answers, cfg, ctx)
