"""`sgpo compare` shows only comparable cells side by side (issue 15, item 4): hand-made judge reports.

A cell whose evaluation report was measured with another setting than its column's majority (or, on
a paper preset, than the paper's) is marked ` *`, and the status names the differing field. A recipe
that has not run gets a row saying so, with the command that runs it."""

from __future__ import annotations

from flows.compare import PAPER_SETTINGS, Row, comparability, markdown, settings_of, table_rows
from sgpo.config import load_config

AE_VERSION = PAPER_SETTINGS["alpaca_eval"]["benchmark_version"]


def ae_report(**over):
    base = {
        "benchmark_version": AE_VERSION,
        "judge_model": "gpt-4-1106-preview",
        "prompt_version": "ae_pair@abc",
        "decoding": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 2048, "seed": 0},
        "lc_regularized": True,
        "win_rate": 30.0,
        "standard_error": 1.0,
        "lc_win_rate": 25.0,
        "lc_standard_error": 0.5,
        "difficulty_source": "offline-reconstruction:/a/instruction_difficulty.csv@sha256:"
        + "1" * 64,
        "gamed_source": "offline-reconstruction:/a/df_gamed.csv@sha256:" + "2" * 64,
    }
    return {**base, **over}


def ah_report(**over):
    base = {
        "benchmark_version": "arena-hard-v0.1",
        "judge_model": "gpt-4-1106-preview",
        "judge_settings": "ah@v1",
        "decoding": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4096, "seed": 0},
        "score": 40.0,
        "ci": "(-2, +2)",
    }
    return {**base, **over}


def row(method, ae=None, ah=None, preset="tiny"):
    r = Row(method=method, preset=preset, status="done")
    if ae is not None:
        r.wr, r.wr_se, r.lc, r.lc_se = (
            ae["win_rate"],
            ae["standard_error"],
            ae["lc_win_rate"],
            ae["lc_standard_error"],
        )
        r.settings["alpaca_eval"] = settings_of("alpaca_eval", ae)
    if ah is not None:
        r.arena_hard, r.arena_hard_ci = ah["score"], ah["ci"]
        r.settings["arena_hard"] = settings_of("arena_hard", ah)
    return r


def test_cells_differing_from_the_column_majority_are_marked_with_the_field():
    rows = [
        row("dpo", ae_report(), ah_report()),
        row("sgpo", ae_report(judge_model="gpt-4o"), ah_report()),  # another judge: both AE2 cells
        row(
            "sppo", ae_report(lc_regularized=False), ah_report(decoding={"temperature": 0.7})
        ),  # LC only; AH decoding
        row(
            "ipo",
            ae_report(
                decoding={"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 2048, "seed": 7}
            ),
            ah_report(judge_settings="ah@v2"),
        ),
    ]  # another seed: comparable; another AH prompt version: not
    marks = comparability(rows)
    assert marks == {
        (1, "AE2 WR (ours)"): ["judge_model gpt-4o (column: gpt-4-1106-preview)"],
        (1, "AE2 LC (ours)"): ["judge_model gpt-4o (column: gpt-4-1106-preview)"],
        (2, "AE2 LC (ours)"): ["lc_regularized False (column: True)"],
        (2, "Arena-Hard WR (95% CI) (ours)"): [
            "decoding.temperature 0.7 (column: 0.0)",
            "decoding.top_p None (column: 1.0)",
            "decoding.max_new_tokens None (column: 4096)",
        ],
        (3, "Arena-Hard WR (95% CI) (ours)"): ["prompt_version ah@v2 (column: ah@v1)"],
    }
    table = table_rows(rows)
    assert (
        table[0]["AE2 LC (ours)"] == "25.00 ± 0.50" and table[0]["status"] == "done"
    )  # the majority: unmarked
    assert (
        table[1]["AE2 WR (ours)"] == "30.00 ± 1.00 *"
        and table[1]["AE2 LC (ours)"] == "25.00 ± 0.50 *"
    )
    assert (
        "* AE2 WR not comparable: judge_model gpt-4o (column: gpt-4-1106-preview)"
        in table[1]["status"]
    )
    assert table[2]["AE2 WR (ours)"] == "30.00 ± 1.00" and table[2]["AE2 LC (ours)"].endswith(" *")
    assert (
        table[3]["AE2 LC (ours)"] == "25.00 ± 0.50"
        and table[3]["Arena-Hard WR (95% CI) (ours)"] == "40.00 (-2, +2) *"
    )
    md = markdown(table)
    assert "\\* not comparable with the rest of its column" in md
    assert "not comparable" not in markdown(
        table_rows(rows[:1])
    )  # one report: nothing to differ from


def test_lc_sources_compare_by_kind_and_content_not_by_path():
    moved = ae_report(
        difficulty_source="offline-reconstruction:/elsewhere/instruction_difficulty.csv@sha256:"
        + "1" * 64
    )
    hub = ae_report(gamed_source="hub:tatsu-lab/alpaca_eval@main:df_gamed.csv")
    rows = [row("a", ae_report()), row("b", moved), row("c", hub)]
    assert comparability(rows) == {
        (2, "AE2 LC (ours)"): [
            "gamed_source hub:tatsu-lab/alpaca_eval@main:df_gamed.csv (column: offline-reconstruction@2222222222222222)"
        ]
    }


def test_no_majority_marks_every_cell_and_paper_presets_use_the_papers_setting():
    tie = [row("a", ae_report()), row("b", ae_report(judge_model="gpt-4o"))]
    assert comparability(tie) == {
        (i, c): [f"judge_model {m} (no majority in the column)"]
        for i, m in enumerate(("gpt-4-1106-preview", "gpt-4o"))
        for c in ("AE2 WR (ours)", "AE2 LC (ours)")
    }
    # on a paper preset, all rows agreeing with each other but not with the paper are all marked
    greedy = dict(decoding={"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 2048})
    rows = [row(m, ae_report(**greedy), preset="qwen2.5-7b") for m in ("dpo", "sgpo")]
    marks = comparability(rows)
    assert marks[(0, "AE2 WR (ours)")] == [
        "decoding.temperature 0.0 (paper: 0.7)",
        "decoding.top_p 1.0 (paper: 0.9)",
    ]
    assert set(marks) == {(i, c) for i in (0, 1) for c in ("AE2 WR (ours)", "AE2 LC (ours)")}
    assert (
        comparability([row("dpo", ae_report(), ah_report(), preset="qwen2.5-7b")]) == {}
    )  # the paper's setting


def test_compare_reports_a_recipe_that_has_not_run(tmp_path):
    from artifacts.store import ArtifactStore
    from flows.compare import compare_row, markdown, table_rows

    cfg = load_config("tiny", ["method=sgpo-dagger", f"store.url={tmp_path}"])
    row = compare_row("sgpo-dagger", "tiny", cfg, ArtifactStore(str(tmp_path)))
    assert row.status == "not run (base_model missing): sgpo run tiny method=sgpo-dagger"
    text = markdown(table_rows([row]))
    assert "| sgpo-dagger | - | - | - | - | n/a (not a paper setting)" in text
