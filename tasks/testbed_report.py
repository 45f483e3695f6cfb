"""Stage `testbed_report` (the testbed preset, `report_vs_sft: true`): what the run did, in numbers
that mean something.

Inputs: the `judge` artifacts of the final policy and of pi_sft (the same eval prompts). Output:
per prompt, both answers, their verifier scores (sgpo.data.testbed.quality, exact match, the habit) and
the pairwise judge's preference of the final policy's answer over pi_sft's, judged by the one
pairwise judge of sgpo.evals.pairwise (AlpacaEval's protocol; on the testbed, the verifier judge served
by the embedded server). Summary: verifier means with SEs for both policies, the win rate over
pi_sft with its SE, and `lines` that the CLI prints at the end of `sgpo run`.
"""

from __future__ import annotations

from artifacts.refs import ArtifactRef
from sgpo.config import PairJudgeConfig
from sgpo.core import Job, stage, stage_main
from sgpo.evals.pairwise import PairJudge
from sgpo.llm.endpoint import require_endpoint


def prompt_versions(cfg: PairJudgeConfig) -> dict[str, str]:
    return {"judge": PairJudge.from_config(cfg).prompt_version}


def report_lines(s: dict) -> list[str]:
    def pct(v) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    a, b = s["sft"], s["final"]
    lines = [
        f"[sgpo] testbed verifier, {a['n']} eval prompts (score {a.get('score_version')}; docs/testbed.md):",
        f"[sgpo]   pi_sft:       exact match {pct(a['exact_match'])} (SE {pct(a['exact_match_se'])}), mean score "
        f"{a['mean_quality']:.3f} (SE {a['mean_quality_se']:.3f}), verbosity habit in {pct(a['habit_rate'])}",
        f"[sgpo]   final policy: exact match {pct(b['exact_match'])} (SE {pct(b['exact_match_se'])}), mean score "
        f"{b['mean_quality']:.3f} (SE {b['mean_quality_se']:.3f}), verbosity habit in {pct(b['habit_rate'])}",
    ]
    if s.get("win_rate") is not None:
        lines.append(
            f"[sgpo]   judged win rate of the final policy over pi_sft: {s['win_rate']:.1f}% (SE "
            f"{s['standard_error']:.1f}; 50% = no change; {s['n_wins']} wins, {s['n_wins_base']} losses, "
            f"{s['n_draws']} draws; judge {s['judge_model']})"
        )
    return lines


@stage(
    "testbed_report",
    section="judge",
    llm="endpoint",
    preflight=require_endpoint,
    prompts=prompt_versions,
    retries=1,
    description="testbed: verifier scores of pi_sft and the final policy, the final policy's win rate over pi_sft",
)
def testbed_report(
    job: Job, final: ArtifactRef, sft: ArtifactRef, cfg: PairJudgeConfig
) -> ArtifactRef:
    import pyarrow as pa

    from sgpo.data.testbed import exact, has_extra, quality, score_answers
    from sgpo.evals.alpaca_eval import win_rate_metrics
    from sgpo.evals.pairwise import call_totals, judge_pairs

    by_final = {r["index"]: r for r in job.read_rows(final)}
    by_sft = {r["index"]: r for r in job.read_rows(sft)}
    idx = sorted(set(by_final) & set(by_sft))
    rows = [
        (by_final[i]["instruction"], by_sft[i]["output_2"] or "", by_final[i]["output_2"] or "")
        for i in idx
    ]
    results, calls = judge_pairs(rows, PairJudge.from_config(cfg), store=job.store)
    table = [
        {
            "index": i,
            "instruction": x,
            "sft": a,
            "final": b,
            "score_sft": quality(a, x),
            "score_final": quality(b, x),
            "exact_sft": exact(a, x),
            "exact_final": exact(b, x),
            "habit_sft": has_extra(a),
            "habit_final": has_extra(b),
            "preference": res["preference"],
        }
        for i, (x, a, b), res in zip(idx, rows, results)
    ]
    wr = win_rate_metrics([t["preference"] for t in table])
    summary = {
        "sft": score_answers([(x, a) for x, a, _ in rows]),
        "final": score_answers([(x, b) for x, _, b in rows]),
        "win_rate": wr.get("win_rate"),
        "standard_error": wr.get("standard_error"),
        "n_labelled": wr.get("n_total"),
        "n_wins": wr.get("n_wins"),
        "n_wins_base": wr.get("n_wins_base"),
        "n_draws": wr.get("n_draws"),
        "judge_model": cfg.endpoint.model,
        **call_totals(calls),
    }
    summary = {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()}
    summary["lines"] = report_lines(summary)
    for line in summary["lines"]:
        job.log.info("%s", line)
    job.log_metrics(
        {
            "exact_match_sft": summary["sft"]["exact_match"],
            "exact_match_final": summary["final"]["exact_match"],
            "mean_score_sft": summary["sft"]["mean_quality"],
            "mean_score_final": summary["final"]["mean_quality"],
            "win_rate_vs_sft": summary["win_rate"],
        }
    )
    return job.publish_table(
        pa.Table.from_pylist(table), summary=summary, seeds={"order": cfg.order_seed}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(testbed_report))
