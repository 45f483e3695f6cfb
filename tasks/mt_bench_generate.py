"""Evaluation stage `mt_bench_generate`: the policy's two-turn answers to the 80 MT-Bench questions.

Protocol: lm-sys/FastChat `fastchat/llm_judge/gen_model_answer.py`: per question, the first user
turn is answered, then the second user turn is asked in the same conversation, which holds the
policy's own first answer; the temperature is the question category's (`temperature_config`:
writing/roleplay 0.7, stem/humanities 0.1, the rest greedy), max 1024 new tokens, the model's chat
template. One generator (one model load) answers both turns of every question; questions are
batched by temperature. `mt_bench_judge` grades the answers.
"""

from __future__ import annotations

import time
from typing import Any

from artifacts.refs import ArtifactRef
from sgpo.config import DatasetSpec, MTBenchGenerateConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import DatasetError, load_records, source_fingerprint

BENCHMARK = "mt_bench"


def _spec(path: str) -> DatasetSpec:
    return DatasetSpec(path=path, split="train")


def load_questions(cfg: MTBenchGenerateConfig) -> list[dict[str, Any]]:
    """The questions (question_id, category, two turns), in file order, first `max_rows`."""
    records = load_records(_spec(cfg.questions))
    rows = []
    for i, q in enumerate(records):
        turns = q.get("turns")
        if (
            not isinstance(turns, list)
            or len(turns) < 2
            or not all(isinstance(t, str) for t in turns[:2])
        ):
            raise DatasetError(
                f"MT-Bench questions {cfg.questions!r}: record {i} has no two string turns "
                f"(keys: {sorted(q)})"
            )
        rows.append(
            {
                "question_id": str(q.get("question_id", i)),
                "category": str(q.get("category") or "general"),
                "turns": [turns[0], turns[1]],
            }
        )
        if cfg.max_rows is not None and len(rows) >= cfg.max_rows:
            break
    if not rows:
        raise DatasetError(f"MT-Bench questions {cfg.questions!r} are empty")
    return rows


def data_fingerprint(cfg: MTBenchGenerateConfig) -> dict[str, str]:
    return {f"questions.{k}": str(v) for k, v in source_fingerprint(_spec(cfg.questions)).items()}


def temperature_of(cfg: MTBenchGenerateConfig, category: str) -> float:
    return float(cfg.category_temperature.get(category, cfg.sampling.temperature))


@stage(
    "mt_bench_generate",
    section="mt_bench",
    recipe="evaluation",
    code_version="1",
    gpu=True,
    fingerprint=data_fingerprint,
    description="the model's two-turn answers to the MT-Bench questions",
)
def mt_bench_generate(
    job: Job, model: ArtifactRef, cfg: MTBenchGenerateConfig, model_name: str
) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.generate import open_generator

    rows = load_questions(cfg)
    job.log.info("mt_bench: %s answers %d questions, two turns each", model_name, len(rows))
    base = cfg.sampling.model_copy(update={"n": 1})
    gen = open_generator(job.model_dir(model), base, trust_remote_code=job.ctx.trust_remote_code)
    answers: dict[int, list[Any]] = {i: [] for i in range(len(rows))}
    t0, tokens = time.perf_counter(), 0
    try:
        groups: dict[float, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(temperature_of(cfg, r["category"]), []).append(i)
        for temperature, idx in sorted(groups.items()):
            params = base.model_copy(
                update={
                    "temperature": temperature,
                    "top_p": 1.0 if temperature == 0 else base.top_p,
                }
            )
            convs = [[{"role": "user", "content": rows[i]["turns"][0]}] for i in idx]
            for i, g in zip(idx, gen.generate(convs, params)):
                answers[i].append(g[0])
            convs = [
                [
                    {"role": "user", "content": rows[i]["turns"][0]},
                    {
                        "role": "assistant",
                        "content": answers[i][0].text,
                    },  # the policy's own first answer
                    {"role": "user", "content": rows[i]["turns"][1]},
                ]
                for i in idx
            ]
            for i, g in zip(idx, gen.generate(convs, params)):
                answers[i].append(g[0])
    finally:
        gen.close()
    seconds = time.perf_counter() - t0
    table = []
    for i, r in enumerate(rows):
        a = answers[i]
        tokens += sum(x.completion_tokens for x in a)
        table.append(
            {
                **r,
                "model_id": model_name,
                "temperature": temperature_of(cfg, r["category"]),
                "answers": [x.text for x in a],
                "finish_reasons": [x.finish_reason for x in a],
                "completion_tokens": [x.completion_tokens for x in a],
            }
        )
    summary = {
        "benchmark": BENCHMARK,
        "n": len(table),
        "generation_seconds": round(seconds, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
        "truncated": sum(fr == "length" for t in table for fr in t["finish_reasons"]),
        "decoding": {
            "category_temperature": dict(cfg.category_temperature),
            "top_p": base.top_p,
            "max_new_tokens": base.max_new_tokens,
            "seed": base.seed,
        },
    }
    job.log_metrics({k: v for k, v in summary.items() if k != "decoding"})
    return job.publish_table(
        pa.Table.from_pylist(table),
        summary=summary,
        seeds={"sampling": base.seed},
        extra={"data_source": source_fingerprint(_spec(cfg.questions))},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(mt_bench_generate))
