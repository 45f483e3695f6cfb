"""MT-Bench answers: lm-sys/FastChat `fastchat/llm_judge/gen_model_answer.py`.

Per question the first user turn is answered, then the second user turn is asked in the same
conversation, which holds the model's own first answer; the temperature is the question category's
(`temperature_config`: writing/roleplay 0.7, stem/humanities 0.1, the rest greedy), max 1024 new
tokens, the model's chat template. One generator answers both turns of every question; questions
are batched by temperature.
"""

from __future__ import annotations

from typing import Any

from sgpo.config import DatasetSpec, MTBenchGenerateConfig, SamplingConfig
from sgpo.data.sources import DatasetError, load_records

BENCHMARK = "mt_bench"


def questions_spec(path: str) -> DatasetSpec:
    return DatasetSpec(path=path, split="train")


def load_questions(cfg: MTBenchGenerateConfig) -> list[dict[str, Any]]:
    """The questions (question_id, category, two turns), in file order, first `max_rows`."""
    records = load_records(questions_spec(cfg.questions))
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


def temperature_of(cfg: MTBenchGenerateConfig, category: str) -> float:
    return float(cfg.category_temperature.get(category, cfg.sampling.temperature))


def answer_both_turns(
    gen: Any, rows: list[dict[str, Any]], cfg: MTBenchGenerateConfig, base: SamplingConfig
) -> dict[int, list[Any]]:
    """Row index -> the generator's two answers (turn 1, turn 2), at each category's temperature."""
    answers: dict[int, list[Any]] = {i: [] for i in range(len(rows))}
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
    return answers
