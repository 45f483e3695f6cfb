"""The Fig. 8/10 rows: the paper's comparison (Sec. 4.4.2) is the self-improver's refinement against the
initial policy's refinement of the same answer and against y_sft; older runs judged y+ against the
unrefined answer y, and say so."""

from __future__ import annotations

from sgpo.report.figures import refinement_rows


def _row(stage, baseline, value):
    return {"stage": stage, "model_column": "chosen", "baseline_column": baseline, "value": value}


def test_each_check_is_named_by_what_y_plus_is_compared_with():
    rows = refinement_rows(
        [
            _row("pairwise[refined_vs_initial]", "refinement", 66.8),
            _row("pairwise[refined_vs_reference]", "reference", 65.6),
            _row("pairwise[refined_vs_initial.r2]", "refinement", 60.0),
            _row("pairwise[refined_vs_policy]", "rejected", 70.0),  # a run from before
            {**_row("pairwise[imp_vs_policy]", "policy", 80.0), "model_column": "imp"},
        ]
    )
    assert [(r["round"], r["versus"], r["value"]) for r in rows] == [
        (1, "initial", 66.8),
        (1, "y", 70.0),
        (1, "y_sft", 65.6),
        (2, "initial", 60.0),
    ]


def test_fig10_labels_a_run_without_the_initial_refinements():
    from sgpo.report.figures import RunArtifacts, StageEntry
    from sgpo.report.html import refinement_by_run

    def run(title, name, baseline, wr):
        entry = StageEntry(
            label=f"pairwise[{name}]",
            stage="pairwise",
            uri=f"file:///x/{name}",
            content_hash="h",
            summary={
                "win_rate": wr,
                "standard_error": 2.0,
                "n_labelled": 10,
                "n": 10,
                "model_column": "chosen",
                "baseline_column": baseline,
            },
            manifest={},
        )
        return RunArtifacts(stages=[entry], read_rows=lambda e: [], title=title)

    fig = refinement_by_run(
        [
            run("sgpo", "refined_vs_initial", "refinement", 66.8),
            run("old", "refined_vs_policy", "rejected", 70.0),
        ]
    )
    assert fig.counts == {"sgpo": 66.8, "old (vs the unrefined y)": 70.0}
