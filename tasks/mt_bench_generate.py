"""Evaluation stage `mt_bench_generate`: the policy's two-turn answers to the 80 MT-Bench questions.

The protocol (FastChat's `gen_model_answer.py`: the second turn asked in the conversation holding
the model's own first answer, each category's temperature) is `sgpo.evals.mt_bench.generation`;
this stage loads the model once, answers and publishes. `mt_bench_judge` grades the answers.
"""

from __future__ import annotations

import time

from artifacts.refs import ArtifactRef
from sgpo.config import MTBenchGenerateConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import source_fingerprint
from sgpo.evals.mt_bench.generation import (
    BENCHMARK,
    answer_both_turns,
    load_questions,
    questions_spec,
    temperature_of,
)


def data_fingerprint(cfg: MTBenchGenerateConfig) -> dict[str, str]:
    return {
        f"questions.{k}": str(v)
        for k, v in source_fingerprint(questions_spec(cfg.questions)).items()
    }


@stage(
    "mt_bench_generate",
    section="mt_bench",
    recipe="evaluation",
    # 2: the transformers back-end seeds each sample (not each batch); the back-end is in the key
    code_version="2",
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
    t0, tokens = time.perf_counter(), 0
    try:
        answers = answer_both_turns(gen, rows, cfg, base)
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
        extra={"data_source": source_fingerprint(questions_spec(cfg.questions))},
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(mt_bench_generate))
