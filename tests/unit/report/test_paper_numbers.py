"""`sgpo compare` shows the papers' published numbers beside ours (issue 21, item 5), read from the
shipped copy sgpo/data/papers/paper_results.json. The expected strings below are typed from the
papers' tables (SGPO Tables 3-7, SAPO Tables 1-5), not produced by the code."""

from __future__ import annotations

import pytest

from sgpo.config import CONFIG_DIR, method_names
from sgpo.report.comparison import Row, markdown, table_rows
from sgpo.report.paper_numbers import (
    PAPER_FILE,
    PAPER_ROWS,
    cells_of,
    paper_cells,
    paper_records,
    records_for,
)


@pytest.mark.parametrize(
    "preset, method, column, shown",
    [
        # SGPO Table 3 (Qwen2.5-7B) and its repeats in Tables 6 and 7 (two decimals there)
        ("qwen2.5-7b", "sgpo", "AE2 LC", "25.2 [T3, T6] / 25.24 [T7]"),
        ("qwen2.5-7b", "sgpo", "Arena-Hard", "41.2 [T3, T6]"),
        ("qwen2.5-7b", "dpo", "AE2 WR", "9.9 [T3]"),
        ("qwen2.5-7b", "no-ref", "AE2 LC", "24.14 [T7]"),
        ("qwen2.5-7b", "no-ref", "Arena-Hard", "not reported"),  # Table 7: AlpacaEval only
        ("llama3-8b", "spin", "AE2 LC", "7.5 [T3] / 7.45 [T4]"),
        ("llama3-8b", "sgpo-diamond", "AE2 WR", "10.23 [T4]"),
        ("llama3-8b", "sgpo-step2", "Arena-Hard", "21.9 [T6]"),
        ("qwen2-1.5b", "sgpo-v2", "AE2 WR", "4.42 [T5]"),
        ("qwen2-1.5b", "sgpo-dagger", "AE2 LC", "not reported"),
        # SAPO Tables 1-2 (DPO- and ORPO-based), 3-5 (ablations)
        ("sapo-llama3-8b", "sft", "Open LLM avg", "63.95 [T1]"),
        ("sapo-llama3-8b", "spin", "AE2 length", "2289 [T2]"),
        ("sapo-llama3-8b", "sapo-dpo", "IFEval", "48.28 [T2, T4]"),
        ("sapo-llama3-8b", "sapo-dpo-fix-ref", "Open LLM avg", "64.45 [T4]"),
        ("sapo-mistral-7b", "sapo-dpo-policy-ref", "IFEval", "41.47 [T4]"),
        ("sapo-mistral-7b", "sft", "AE2 WR", "21.94 [T2]"),
        ("sapo-orpo-llama3-8b", "sft", "ARC", "58.02 [T1]"),  # the raw Meta-Llama-3-8B
        ("sapo-orpo-llama3-8b", "sft", "IFEval", "not reported"),
        ("sapo-orpo-llama3-8b", "sapo-orpo", "Open LLM avg", "67.36 [T1, T3, T5]"),
        ("sapo-orpo-llama3-8b", "sapo-orpo", "MT-Bench T1", "7.76 [T2, T5]"),
        ("sapo-orpo-llama3-8b", "sapo-orpo-on-policy", "IFEval", "36.73 [T3]"),
        ("sapo-orpo-llama3-8b", "sapo-orpo-segment-64", "MT-Bench T2", "6.7 [T5]"),
        ("sapo-orpo-mistral-7b", "spin-orpo", "GSM8K", "39.88 [T1]"),
        ("tiny", "sgpo", "AE2 LC", "n/a (not a paper setting)"),
    ],
)
def test_a_cell_shows_the_papers_number_and_its_tables(preset, method, column, shown):
    assert paper_cells(preset, method)[column] == shown


TABLES = {
    "SGPO": {f"Table {n}" for n in (3, 4, 5, 6, 7)},
    "SAPO": {f"Table {n}" for n in range(1, 6)},
}


def test_every_cell_of_the_tables_stands_beside_a_recipe():
    shown = set()
    for preset, rows in PAPER_ROWS.items():
        cells = cells_of(preset)
        for method in rows:
            for r in records_for(preset, method):
                if any((r["benchmark"], r["metric"]) in keys for keys in cells.values()):
                    shown.add(id(r))
    missing = [
        (r["paper"], r["table"], r["model"], r["method"], r["benchmark"], r["metric"])
        for r in paper_records()
        if r["table"] in TABLES[r["paper"]] and id(r) not in shown
    ]
    assert missing == []


def test_the_mapping_names_real_presets_recipes_and_records():
    recipes = set(method_names())
    for preset, rows in PAPER_ROWS.items():
        assert (CONFIG_DIR / f"{preset}.yaml").is_file(), preset
        for method, row in rows.items():
            assert method in recipes, method
            found = {r["table"] for r in records_for(preset, method)}
            assert found == set(row.methods), (preset, method)  # no misspelt record


def test_the_copy_is_shipped_with_its_source():
    readme = (PAPER_FILE.parent / "README.md").read_text()
    assert "transcribed by hand" in readme and "github.com/yinyueqin/SAPO" in readme
    assert len(paper_records()) == 384


def test_the_sapo_layout_puts_ours_beside_the_papers():
    r = Row(method="sapo-orpo", preset="sapo-orpo-llama3-8b", status="done")
    r.lm_eval = {"arc_challenge": 60.0, "truthfulqa_mc2": 55.0, "winogrande": 80.0, "gsm8k": 50.0}
    r.lm_eval |= {"hellaswag": 82.0, "mmlu": 63.0, "ifeval": 51.5}
    r.mt_bench = {"score_turn_1": 7.5, "score_turn_2": 7.0, "score": 7.25}
    r.lc, r.lc_se, r.wr, r.wr_se, r.ae_length = 10.0, 0.5, 9.0, 0.8, 1490.4
    (row,) = table_rows([r])
    # (60 + 55 + 80 + 50 + 82 + 63) / 6 = 65.0
    assert (row["Open LLM avg (ours)"], row["Open LLM avg (paper)"]) == (
        "65.00",
        "67.36 [T1, T3, T5]",
    )
    assert (row["IFEval (ours)"], row["IFEval (paper)"]) == ("51.50", "50.39 [T2, T3, T5]")
    assert (row["MT-Bench avg (ours)"], row["AE2 length (ours)"]) == ("7.25", "1490")
    assert row["AE2 LC (ours)"] == "10.00 ± 0.50" and row["AE2 LC (paper)"] == "9.72 [T2, T5]"
    assert "sgpo/data/papers/paper_results.json" in markdown([row])
    r.lm_eval.pop("mmlu")
    assert table_rows([r])[0]["Open LLM avg (ours)"] == "-"  # five of six tasks: no average
