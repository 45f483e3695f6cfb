"""The figures' data preparation on hand-made tables (expected values worked out by hand), and
the figure set of a run: a stage that is absent leaves its figure out, a figure that cannot be
made is missing with its reason, never an exception."""

from __future__ import annotations

import pytest

from sgpo.report.figures import (
    RunArtifacts,
    StageEntry,
    cache_hits,
    edit_distance_data,
    make_figures,
    perplexity_data,
    stage_costs,
    training_curves,
    win_rate_rows,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_edit_distance_bins_over_0_1_and_missing_answers_counted_not_plotted():
    rows = [{"norm_edit_imp_vs_b": v} for v in (0.0, 0.05, 0.12, 0.5, 0.55, 1.0)] + [
        {"norm_edit_imp_vs_b": None}
    ]
    d = edit_distance_data(
        rows, "norm_edit_imp_vs_b", bins=4
    )  # bins [0,.25) [.25,.5) [.5,.75) [.75,1]
    assert d["counts"] == [3, 0, 2, 1]
    assert d["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (d["n"], d["missing"]) == (6, 1)
    assert d["mean"] == pytest.approx(2.22 / 6)
    assert d["median"] == pytest.approx((0.12 + 0.5) / 2)


def test_edit_distance_of_a_table_without_the_column_or_values_is_an_error():
    with pytest.raises(KeyError, match="norm_edit_imp_vs_a"):
        edit_distance_data([{"x": 1}], "norm_edit_imp_vs_a")
    with pytest.raises(ValueError, match="every improved answer is missing"):
        edit_distance_data([{"norm_edit_imp_vs_a": None}], "norm_edit_imp_vs_a")


def test_perplexity_uses_the_manifests_fences_and_the_tables_kept_flag():
    rows = [
        {"target_type": "imp", "ppl": 10.0, "kept": True},
        {"target_type": "imp", "ppl": 12.0, "kept": True},
        {"target_type": "imp", "ppl": 50.0, "kept": False},
        {"target_type": "ext", "ppl": 20.0, "kept": True},
        {"target_type": "ext", "ppl": 1.0, "kept": False},
        {"target_type": "ext", "ppl": 90.0, "kept": False},
    ]
    # deliberately not what the quartiles of these rows would give: the figure must draw the manifest's cut
    fences = {
        "imp": {
            "low": 5.0,
            "high": 30.0,
            "q1": 9.0,
            "q3": 14.0,
            "total": 3,
            "kept": 2,
            "dropped": 1,
        },
        "ext": {"low": 2.0, "high": 60.0, "total": 3, "kept": 1, "dropped": 2},
    }
    d = perplexity_data(rows, fences, bins=10)
    assert set(d) == {"imp", "ext"}
    assert (d["imp"]["low"], d["imp"]["high"]) == (5.0, 30.0)
    assert (d["ext"]["low"], d["ext"]["high"]) == (2.0, 60.0)
    assert (d["imp"]["n_kept"], d["imp"]["n_dropped"]) == (2, 1)
    assert (d["ext"]["n_kept"], d["ext"]["n_dropped"]) == (1, 2)
    assert sorted(d["ext"]["dropped"]) == [1.0, 90.0]
    # imp range: 5 (fence) .. 50 (value), padded by 2% of 45 = 0.9 -> [4.1, 50.9], 10 bins of 4.68
    edges = d["imp"]["edges"]
    assert edges[0] == pytest.approx(4.1) and edges[-1] == pytest.approx(50.9) and len(edges) == 11
    assert d["imp"]["counts_kept"] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 0]  # 10 and 12 in [8.78, 13.46)
    assert d["imp"]["counts_dropped"] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert sum(d["ext"]["counts_kept"]) == 1 and sum(d["ext"]["counts_dropped"]) == 2


def test_perplexity_without_fences_in_the_manifest_is_an_error():
    with pytest.raises(ValueError, match="no fences"):
        perplexity_data([{"target_type": "imp", "ppl": 1.0, "kept": True}], {})


def test_training_curves_take_per_step_logs_and_leave_out_the_final_summary():
    history = [
        {
            "step": 2,
            "loss": 0.69,
            "learning_rate": 1e-4,
            "rewards/margins": 0.0,
            "rewards/accuracies": 0.5,
        },
        {"step": 1, "loss": 0.70, "learning_rate": 2e-4, "grad_norm": 1.0},
        {"step": 3, "loss": float("nan"), "learning_rate": 5e-5},
        {"step": 3, "train_loss": 0.69, "train_runtime": 1.0},
    ]
    c = training_curves(history)
    assert c["loss"] == [(1, 0.70), (2, 0.69)]
    assert c["learning_rate"] == [(1, 2e-4), (2, 1e-4), (3, 5e-5)]
    assert c["rewards/margins"] == [(2, 0.0)] and c["rewards/accuracies"] == [(2, 0.5)]
    assert "grad_norm" not in c and "train_loss" not in c


def _entry(label, status="ran", summary=None, manifest=None, seconds=1.0):
    return StageEntry(
        label=label,
        stage=label.split("[")[0],
        uri=f"file:///s/{label}",
        content_hash="h" * 16,
        status=status,
        seconds=seconds,
        summary=summary or {},
        manifest=manifest or {},
    )


def test_stage_costs_and_cache_hits():
    stages = [
        _entry("sft", manifest={"seconds": 9.5}),
        _entry(
            "annotate",
            "cached",
            {
                "sent": 0,
                "from_journal": 48,
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "cost_usd": 0.25,
            },
        ),
        _entry("judge", summary={"sent": 10, "from_journal": 6, "cost_usd": None}),
    ]
    rows = {r["label"]: r for r in stage_costs(stages)}
    assert rows["sft"]["compute_seconds"] == 9.5 and rows["sft"]["llm_sent"] is None
    assert (
        rows["annotate"]["llm_sent"],
        rows["annotate"]["llm_from_journal"],
        rows["annotate"]["tokens"],
        rows["annotate"]["cost_usd"],
    ) == (0, 48, 120, 0.25)
    assert rows["judge"]["cost_usd"] is None
    assert cache_hits(stages) == {"ran": 2, "cached": 1}


def test_win_rate_rows_of_the_judges():
    run = RunArtifacts(
        stages=[
            _entry(
                "judge",
                summary={"win_rate": 25.0, "standard_error": 11.18, "n_labelled": 16, "n": 16},
            ),
            _entry(
                "arena_hard_judge",
                summary={"score": 40.0, "ci_low": 36.0, "ci_high": 45.0, "n_questions": 500},
            ),
            _entry("sft"),
        ],
        read_rows=lambda e: [],
    )
    rows = win_rate_rows(run)
    assert [(r["label"], r["value"], r["se"]) for r in rows] == [
        ("judge (final policy vs baseline)", 25.0, 11.18),
        ("Arena-Hard v0.1 score", 40.0, 4.5),
    ]


def test_make_figures_leaves_out_absent_stages_and_reports_missing_ones():
    tables = {
        "annotate": [{"norm_edit_imp_vs_b": 0.2, "norm_edit_imp_vs_a": 0.8}] * 3,
        "ppl_filter": [{"target_type": "imp", "ppl": 3.0, "kept": True}],
    }
    run = RunArtifacts(
        stages=[
            _entry("annotate"),
            _entry("ppl_filter", manifest={"fences": {"imp": {"low": 1.0, "high": 5.0}}}),
            _entry(
                "dpo",
                manifest={"train_history": [{"step": 1, "loss": 0.7, "rewards/margins": 0.1}]},
            ),
            _entry("sft", manifest={}),  # made before train_history was recorded
        ],
        read_rows=lambda e: tables[e.label],
    )
    figs = {f.id: f for f in make_figures(run)}
    assert set(figs) == {
        "fig3_edit_vs_b",
        "fig4_edit_vs_a",
        "fig5_perplexity",
        "train_dpo",
        "train_sft",
        "stages",
    }
    for fid in ("fig3_edit_vs_b", "fig4_edit_vs_a", "fig5_perplexity", "train_dpo", "stages"):
        assert figs[fid].png.startswith(PNG_MAGIC) and figs[fid].missing is None, fid
    assert figs["fig3_edit_vs_b"].title.startswith("Fig. 3") and figs[
        "fig5_perplexity"
    ].title.startswith("Fig. 5")
    assert figs["fig3_edit_vs_b"].counts["n"] == 3
    assert figs["fig5_perplexity"].counts == {
        "imp": {"kept": 1, "dropped": 0, "low": 1.0, "high": 5.0}
    }
    assert figs["train_sft"].png is None and "train_history" in figs["train_sft"].missing
    # no judge stage in this run: no judge figure (no empty plot)
    assert "judge" not in figs


def test_a_table_that_cannot_be_read_makes_its_figures_missing_not_an_error():
    def broken(entry):
        raise OSError("artifact deleted")

    figs = {
        f.id: f for f in make_figures(RunArtifacts(stages=[_entry("annotate")], read_rows=broken))
    }
    assert (
        figs["fig3_edit_vs_b"].png is None and "artifact deleted" in figs["fig3_edit_vs_b"].missing
    )
    assert figs["stages"].png is not None


# ------------------------------------------------------------------------------------------- SAPO
BUFFER = [
    {
        "entry_id": i,
        "step": step,
        "uses": uses,
        "prompt": "p",
        "chosen_text": "c",
        "rejected_text": "r",
        "cut": 1,
        "segment_tokens": 4,
    }
    for i, (step, uses) in enumerate([(0, 0), (0, 2), (0, 2), (1, 1), (2, 0), (2, 3)])
]


def test_sapo_buffer_data_counts_uses_and_producing_steps():
    from sgpo.report.figures import sapo_buffer_data

    d = sapo_buffer_data(BUFFER, {"ema_updates": 4.0, "reference_updates": 1.0, "loss": 0.6})
    assert d["n"] == 6 and d["use_counts"] == {
        0: 2,
        1: 1,
        2: 2,
        3: 1,
    }  # every count up to the max, zeros kept
    assert d["by_step"] == {0: 3, 1: 1, 2: 2} and d["mean_uses"] == pytest.approx(8 / 6)
    assert (d["ema_updates"], d["reference_updates"]) == (4.0, 1.0)
    assert sapo_buffer_data(BUFFER)["ema_updates"] is None  # no last_metrics: left out of the title
    with pytest.raises(ValueError, match="empty"):
        sapo_buffer_data([])


def test_sapo_figures_only_when_the_sapo_stage_ran():
    history = [
        {"step": 1, "loss": 0.69, "rewards/margins": 0.0, "learning_rate": 1e-6},
        {"step": 2, "loss": 0.65, "rewards/margins": 0.2, "learning_rate": 1e-6},
    ]
    sapo = _entry("sapo", manifest={"train_history": history, "last_metrics": {"ema_updates": 2.0}})
    run = RunArtifacts(
        stages=[sapo],
        read_rows=lambda e: [],
        read_side_rows=lambda e, name: (
            BUFFER if (e.label, name) == ("sapo", "buffer.parquet") else []
        ),
    )
    figs = {f.id: f for f in make_figures(run)}
    assert {"train_sapo", "sapo_buffer"} <= set(figs)
    assert figs["train_sapo"].counts == {"loss": 2, "rewards/margins": 2, "learning_rate": 2}
    assert figs["sapo_buffer"].png.startswith(PNG_MAGIC) and figs["sapo_buffer"].counts[
        "use_counts"
    ] == {0: 2, 1: 1, 2: 2, 3: 1}
    assert figs["sapo_buffer"].title.startswith("SAPO replay buffer")
    no_reader = {f.id: f for f in make_figures(RunArtifacts(stages=[sapo], read_rows=lambda e: []))}
    assert (
        no_reader["sapo_buffer"].png is None and "cannot open" in no_reader["sapo_buffer"].missing
    )
    without = {
        f.id for f in make_figures(RunArtifacts(stages=[_entry("dpo")], read_rows=lambda e: []))
    }
    assert not any(f.startswith(("sapo", "train_sapo")) for f in without)


# ------------------------------------------------------------------------- Table 1, Fig. 8, 9, 10
def _check(name, model, baseline, wr, se=5.0, n=16):
    return _entry(
        f"pairwise[{name}]",
        summary={
            "win_rate": wr,
            "standard_error": se,
            "n_labelled": n,
            "n": n,
            "model_column": model,
            "baseline_column": baseline,
        },
    )


def test_refinement_rows_take_the_round_from_the_checks_name_and_leave_other_pairwise_out():
    from sgpo.report.figures import refinement_rows

    run = RunArtifacts(
        stages=[
            _check("imp_vs_policy", "imp", "policy", 80.0),
            _check("refined_vs_policy", "chosen", "rejected", 65.0),
            _check("refined_vs_reference", "chosen", "reference", 48.0),
            _check("refined_vs_policy.r2", "chosen", "rejected", 60.0),
        ],
        read_rows=lambda e: [],
    )
    rows = refinement_rows(win_rate_rows(run))
    assert [(r["round"], r["versus"], r["value"]) for r in rows] == [
        (1, "y", 65.0),
        (1, "y_sft", 48.0),
        (2, "y", 60.0),
    ]


def test_table1_fig8_and_the_judge_are_separate_figures():
    run = RunArtifacts(
        stages=[
            _entry(
                "judge",
                summary={"win_rate": 52.0, "standard_error": 9.0, "n_labelled": 16, "n": 16},
            ),
            _check("imp_vs_policy", "imp", "policy", 80.0),
            _check("imp_vs_reference", "imp", "reference", 45.0),
            _check("refined_vs_policy", "chosen", "rejected", 65.0),
        ],
        read_rows=lambda e: [],
    )
    figs = {f.id: f for f in make_figures(run)}
    assert figs["judge"].counts == {"judge (final policy vs baseline)": 52.0}
    assert figs["table1_improved_data"].title.startswith("Table 1")
    assert figs["table1_improved_data"].counts == {
        "pairwise[imp_vs_policy]": 80.0,
        "pairwise[imp_vs_reference]": 45.0,
    }
    assert figs["fig8_refinement"].title.startswith("Fig. 8") and figs[
        "fig8_refinement"
    ].counts == {"round 1 vs y": 65.0}
    assert all(
        figs[k].png.startswith(PNG_MAGIC)
        for k in ("judge", "table1_improved_data", "fig8_refinement")
    )
    # a run without refinement checks draws no Fig. 8; a user's own pairwise is neither Table 1 nor Fig. 8
    other = {
        f.id: f
        for f in make_figures(
            RunArtifacts(stages=[_check("x_vs_y", "x", "y", 30.0)], read_rows=lambda e: [])
        )
    }
    assert "pairwise" in other and not {"fig8_refinement", "table1_improved_data", "judge"} & set(
        other
    )


def test_fig9_perplexity_is_exp_of_the_mean_token_nll_and_unscored_pairs_are_counted():
    import math

    from sgpo.report.figures import perplexity_by_type_data

    rows = [
        {
            "ref_chosen_logps": -4 * math.log(10),
            "ref_rejected_logps": -2 * 3 * math.log(100),
            "chosen_tokens": 4,
            "rejected_tokens": 3,
        },  # ppl 10 and 100
        {
            "ref_chosen_logps": -5 * math.log(1000),
            "ref_rejected_logps": float("nan"),
            "chosen_tokens": 5,
            "rejected_tokens": 7,
        },  # ppl 1000; NaN: a pair TRL dropped
        {
            "ref_chosen_logps": -1.0,
            "ref_rejected_logps": -1.0,
            "chosen_tokens": 0,
            "rejected_tokens": 2,
        },
    ]
    d = perplexity_by_type_data(rows, bins=4)
    assert d["chosen"]["values"] == pytest.approx([10.0, 1000.0]) and d["rejected"][
        "values"
    ] == pytest.approx([10000.0, math.e**0.5])
    assert d["skipped"] == 2  # the NaN rejected and the chosen with no scored token
    # log-spaced common range: 10**0.217 .. 10**(4 + pad) over 4 bins
    assert d["edges"][0] < math.e**0.5 < d["edges"][1] and d["edges"][-1] > 10000
    assert sum(d["chosen"]["counts"]) == 2 and sum(d["rejected"]["counts"]) == 2
    assert d["chosen"]["median"] == pytest.approx(505.0)
    with pytest.raises(KeyError, match="no token counts"):
        perplexity_by_type_data([{"ref_chosen_logps": -1.0, "ref_rejected_logps": -1.0}])


def test_fig9_reads_the_dpo_reference_table_and_names_the_reference():
    import math

    table = [
        {
            "ref_chosen_logps": -3 * math.log(20),
            "ref_rejected_logps": -3 * math.log(40),
            "chosen_tokens": 3,
            "rejected_tokens": 3,
        }
    ] * 4
    dpo = _entry(
        "dpo",
        manifest={
            "reference_logps": "file:///s/ref_logps/k",
            "parents": {"start": {"stage": "improver_sft"}},
        },
    )
    run = RunArtifacts(
        stages=[dpo], read_rows=lambda e: table if e.uri == "file:///s/ref_logps/k" else []
    )
    (fig,) = [f for f in make_figures(run) if f.id.startswith("fig9")]
    assert (
        fig.title.startswith("Fig. 9")
        and "the improver pi_imp" in fig.title
        and fig.source_uri == "file:///s/ref_logps/k"
    )
    assert fig.counts["chosen"]["median"] == pytest.approx(20.0) and fig.counts["rejected"][
        "median"
    ] == pytest.approx(40.0)
    live = _entry(
        "dpo", manifest={"parents": {"start": {"stage": "sft"}}}
    )  # dpo.reference_logps=live: no table
    assert not any(
        f.id.startswith("fig9")
        for f in make_figures(RunArtifacts(stages=[live], read_rows=lambda e: []))
    )


def test_fig10_needs_two_runs_with_the_refinement_check():
    from sgpo.report.html import refinement_by_run

    def run(title, wr):
        return RunArtifacts(
            stages=[_check("refined_vs_initial", "chosen", "refinement", wr)],
            read_rows=lambda e: [],
            title=title,
        )

    fig = refinement_by_run(
        [run("sgpo", 65.0), run("no-ref", 55.0), RunArtifacts(stages=[], read_rows=lambda e: [])]
    )
    assert fig.png.startswith(PNG_MAGIC) and fig.counts == {"sgpo": 65.0, "no-ref": 55.0}
    alone = refinement_by_run(
        [run("sgpo", 65.0), RunArtifacts(stages=[], read_rows=lambda e: [], title="dpo")]
    )
    assert alone.png is None and "1 of 2 runs" in alone.missing
