"""Evaluation stage `alpaca_eval_generate`: the policy's answers to the AlpacaEval 2.0 instructions.

Data: the AlpacaEval set (805 instructions with gpt4_1106_preview's baseline outputs); row positions
are kept (`index`), since the length-controlled GLM looks the instruction difficulty up by row of
the official set. The answers are sampled with the configured settings (the SGPO paper:
temperature 0.7, top-p 0.9). `alpaca_eval_judge` judges them.
"""

from __future__ import annotations

import random
from typing import Any

from artifacts.refs import ArtifactRef
from sgpo.config import AlpacaEvalGenerateConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import DatasetError, load_records, source_fingerprint

DEFAULT_BASELINE_NAME = "gpt4_1106_preview"


def _select(n: int, *, shuffle_seed: int | None, limits: list[int | None]) -> list[int]:
    order = list(range(n))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    caps = [m for m in limits if m is not None]
    return order[: min(caps)] if caps else order


def load_alpaca_eval_rows(cfg: AlpacaEvalGenerateConfig) -> tuple[list[dict[str, Any]], int]:
    """(selected rows with their `index` in the full set, number of rows in the full set)."""
    spec = cfg.data
    records = load_records(spec)
    if not records:
        raise DatasetError(f"AlpacaEval data {spec.path!r} is empty")
    columns = list(records[0])
    instr_col = spec.prompt_column or "instruction"
    out_col = spec.response_column or "output"
    for col, role in ((instr_col, "prompt_column"), (out_col, "response_column")):
        if col not in columns:
            raise DatasetError(
                f"AlpacaEval data {spec.path!r} has no column {col!r} (alpaca_eval.data.{role}); columns: {columns}"
            )
    rows = []
    for i in _select(
        len(records), shuffle_seed=spec.shuffle_seed, limits=[cfg.max_rows, spec.max_rows]
    ):
        r = records[i]
        instruction, baseline = r.get(instr_col), r.get(out_col)
        if not isinstance(instruction, str) or not isinstance(baseline, str):
            raise DatasetError(
                f"AlpacaEval data {spec.path!r}: row {i} lacks a string {instr_col!r} / {out_col!r}"
            )
        rows.append(
            {
                "index": i,
                "dataset": str(r.get("dataset")) if r.get("dataset") is not None else None,
                "instruction": instruction,
                "baseline_output": baseline,
                "baseline_generator": cfg.baseline_name
                or str(r.get("generator") or DEFAULT_BASELINE_NAME),
            }
        )
    return rows, len(records)


def data_fingerprint(cfg: AlpacaEvalGenerateConfig) -> dict[str, str]:
    return {f"data.{k}": str(v) for k, v in source_fingerprint(cfg.data).items()}


@stage(
    "alpaca_eval_generate",
    section="alpaca_eval",
    recipe="evaluation",
    # 3: the transformers back-end seeds each sample (not each batch); the back-end is in the key
    code_version="3",
    gpu=True,
    fingerprint=data_fingerprint,
    description="the model's answers to the AlpacaEval 2.0 instructions",
)
def alpaca_eval_generate(
    job: Job, model: ArtifactRef, cfg: AlpacaEvalGenerateConfig, model_name: str
) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generate import answer_each

    rows, n_source = load_alpaca_eval_rows(cfg)
    job.log.info("alpaca_eval: %s answers %d of %d instructions", model_name, len(rows), n_source)
    answers = answer_each(
        job.model_dir(model),
        [r["instruction"] for r in rows],
        cfg.sampling,
        trust_remote_code=job.ctx.trust_remote_code,
    )
    table = [
        {
            **r,
            "output": a.text,
            "generator": model_name,
            "finish_reason": a.finish_reason,
            "completion_tokens": a.completion_tokens,
        }
        for r, a in zip(rows, answers)
    ]
    summary = {
        "n": len(table),
        "n_source_rows": n_source,
        "decoding": {
            k: getattr(cfg.sampling, k) for k in ("temperature", "top_p", "max_new_tokens", "seed")
        },
        "avg_length": sum(len(t["output"]) for t in table) / max(len(table), 1),
        "truncated": sum(t["finish_reason"] == "length" for t in table),
    }
    job.log_metrics(summary)
    return job.publish_table(
        pa.Table.from_pylist(table),
        summary=summary,
        seeds={"sampling": cfg.sampling.seed},
        extra={"data_source": source_fingerprint(cfg.data)},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(alpaca_eval_generate))
