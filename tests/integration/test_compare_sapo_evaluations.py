"""`sgpo compare` on a SAPO preset reads a final policy's `sgpo evaluate` results from the store by
the model's content hash: lm-eval (Open LLM Leaderboard tasks, IFEval), MT-Bench, AlpacaEval 2.0."""

from __future__ import annotations

import pyarrow as pa

from artifacts.store import ArtifactStore
from sgpo.report.comparison import Row, add_evaluations, table_rows


def _publish(store, stage, key, parents, summary):
    return store.publish_table(
        stage,
        key,
        pa.table({"x": [1]}),
        manifest={"parents": parents},
        summary=summary,
    )


def test_the_sapo_columns_come_from_the_models_evaluations(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    model = {"model": {"content_hash": "m" * 64, "uri": "file:///m"}}
    other = {"model": {"content_hash": "o" * 64, "uri": "file:///o"}}
    headline = {"arc_challenge": 0.6, "truthfulqa_mc2": 0.55, "winogrande": 0.8, "gsm8k": 0.5}
    headline |= {"hellaswag": 0.82, "mmlu": 0.63, "ifeval": 0.515}
    _publish(store, "lm_eval", "k1", model, {"headline": headline})
    _publish(store, "lm_eval", "k2", other, {"headline": {"ifeval": 0.99}})  # another model
    answers = _publish(store, "mt_bench_generate", "k3", model, {})
    _publish(
        store,
        "mt_bench_judge",
        "k4",
        {"answers": {"uri": answers.uri}},
        {"score_turn_1": 7.5, "score_turn_2": 7.0, "score": 7.25},
    )
    ae = _publish(store, "alpaca_eval_generate", "k5", model, {})
    _publish(
        store,
        "alpaca_eval_judge",
        "k6",
        {"answers": {"uri": ae.uri}},
        {"win_rate": 9.0, "standard_error": 0.8, "lc_win_rate": 10.0, "avg_length": 1490},
    )
    row = add_evaluations(
        Row(method="sapo-orpo", preset="sapo-orpo-llama3-8b", status="done"),
        store,
        "m" * 64,
        "file:///m",
    )
    (cells,) = table_rows([row])
    assert cells["ARC (ours)"] == "60.00" and cells["IFEval (ours)"] == "51.50"
    assert cells["Open LLM avg (ours)"] == "65.00"  # (60 + 55 + 80 + 50 + 82 + 63) / 6
    assert (cells["MT-Bench T1 (ours)"], cells["MT-Bench avg (ours)"]) == ("7.50", "7.25")
    assert (cells["AE2 WR (ours)"], cells["AE2 length (ours)"]) == ("9.00 ± 0.80", "1490")
    assert cells["ARC (paper)"] == "61.95 [T1]"
