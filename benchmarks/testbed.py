"""The testbed comparison (docs/testbed.md): every testbed recipe x seeds, mean ± SE per method.

    python benchmarks/testbed.py                          # run what is missing, then print the table
    python benchmarks/testbed.py --report-only            # only read the store (like sgpo compare)
    python benchmarks/testbed.py --seeds 0 1 2 --methods sft spin sgpo -o .sgpo/testbed
    python benchmarks/testbed.py --model smol --seeds 0 --methods sft sgpo   # SmolLM2-135M-Instruct

Each (method, seed) is one `sgpo_pipeline` run of `configs/testbed.yaml` with `method=M` and the
seed overrides of `seed_overrides(s)` (model init, every training and sampling seed; the data are
fixed). All runs go through one process (one Prefect start-up) and share stages from the cache
(pi_sft per seed, the improver per seed, SGPO's round 1 with SGPO + Step 2). The table is read back
from the store by content (flows.compare.resolve_plan: nothing re-runs): per method, the mean over
seeds of the verifier's exact match / mean score / habit rate of the final policy and its judged win
rate over pi_sft, each ± the standard error of that mean over seeds (sd / sqrt(seeds)). For recipes
whose chosen answers are refinements, the refiner's quality beside them: the verifier's score of each
refinement y+ against the answer y it refines (the quantity the SGPO paper's Fig. 8 is about).
`--model smol` runs the `testbed-smol` preset: the same tasks with SmolLM2-135M-Instruct as the
policy and improver (docs/testbed.md, "A model that can read").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METHODS = [
    "sft",
    "sft-continued",
    "dpo",
    "spin",
    "sgpo-diamond",
    "sgpo-dagger",
    "sgpo",
    "sgpo-step2",
]
SEED_KEYS = [
    "model.tiny.seed",
    "sft.seed",
    "improver_sft.seed",
    "dpo.seed",
    "dpo_baseline.seed",
    "spin.seed",
    "sft_continued.seed",
    "sample.sampling.seed",
    "pairs.sampling.seed",
    "judge.sampling.seed",
    "annotate.seed",
]


def seed_overrides(seed: int) -> list[str]:
    return [f"{k}={seed}" for k in SEED_KEYS]


def configs(preset: str, methods: list[str], seeds: list[int], overrides: list[str]):
    """(method, seed, config); a seed goes only to the sections the recipe reads (sgpo refuses a
    setting that a recipe would ignore)."""
    from flows.pipeline import unread_settings
    from sgpo.config import load_config

    for seed in seeds:
        for m in methods:
            seeds = seed_overrides(seed)
            cfg = load_config(preset, [*overrides, *seeds, f"method={m}"])
            unread = {line.split(":")[0] for line in unread_settings(cfg)}
            read = [o for o in seeds if o.split("=")[0] not in unread]
            yield m, seed, load_config(preset, [*overrides, *read, f"method={m}"])


PRESETS = {"tiny": "testbed", "smol": "testbed-smol"}  # --model -> the testbed preset of that model
SMOL_METHODS = ["sft", "sft-continued", "spin", "sgpo-diamond", "sgpo", "sgpo-step2", "all-ref"]


def find_report(cfg) -> dict | None:
    """The run's testbed_report summary, with the refiner's quality of each round's refined pairs."""
    from flows.compare import _store, resolve_plan

    store = _store(cfg)
    refs, missing = resolve_plan(cfg, store)
    if missing:
        return None
    summary = dict(refs["testbed_report"].summary)
    if cfg.algorithm == "sgpo" and cfg.pairs.chosen == "refined":
        rounds = sorted(label for label in refs if label.split("[")[0] == "pairs")
        summary["refiner"] = [
            refiner_quality(store.read_table(refs[r]).to_pylist()) for r in rounds
        ]
    return summary


def score_stage_model(cfg, label: str) -> dict | None:
    """The verifier on the eval prompts for the model another step of the run made (`--also-score
    improver_sft`: SGPO's pi_imp, the policy before its preference step), answered exactly as the
    judge stage answers them (`sgpo.generate.answer_each`, `judge.sampling`); None if the run lacks
    that step. Measures what the preference step itself added."""
    from flows.compare import _store, resolve_plan
    from sgpo.data.testbed import score_answers
    from sgpo.generate import answer_each

    store = _store(cfg)
    refs, missing = resolve_plan(cfg, store)
    if missing or label not in refs:
        return None
    rows = store.read_table(refs["prepare[eval]"]).to_pylist()
    answers = answer_each(
        store.model_dir(refs[label]), [r["prompt"] for r in rows], cfg.judge.sampling
    )
    # the verifier summary testbed_report gives the final policy and pi_sft
    return {"label": label, **score_answers([(r["prompt"], a.text) for r, a in zip(rows, answers)])}


def refiner_quality(rows: list[dict]) -> dict:
    """The verifier on each refined pair: y+ (chosen, the refinement) vs y (rejected, the answer it
    refines): mean scores, the share of refinements better / worse / equal, and the share that copies
    the reference verbatim (a refiner that copies learns nothing about refining)."""
    from sgpo.data.testbed import quality

    scored = [
        (quality(r["chosen"], r["prompt"]), quality(r["rejected"], r["prompt"]), r) for r in rows
    ]
    n = max(len(scored), 1)
    return {
        "pairs": len(scored),
        "refined_score": sum(c for c, _, _ in scored) / n,
        "answer_score": sum(a for _, a, _ in scored) / n,
        "better": sum(c > a for c, a, _ in scored) / n,
        "worse": sum(c < a for c, a, _ in scored) / n,
        "equal": sum(c == a for c, a, _ in scored) / n,
        "copies_reference": sum(r["chosen"].strip() == r["reference"].strip() for _, _, r in scored)
        / n,
    }


def mean_se(v: list[float]) -> tuple[float | None, float | None]:
    v = [x for x in v if x is not None]
    if not v:
        return None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def table(results: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[str, list[dict]]:
    cols = [
        "method",
        "seeds",
        "exact match %",
        "mean score",
        "habit %",
        "WR over pi_sft %",
        "per-seed exact match %",
        "refiner: y+ vs y score (better / worse / equal %); seeds split by ;",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows = []
    for m, by_seed in results.items():
        got = [by_seed[s] for s in seeds if by_seed.get(s)]
        em = mean_se([100 * r["final"]["exact_match"] for r in got])
        ms = mean_se([r["final"]["mean_quality"] for r in got])
        hb = mean_se([100 * r["final"]["habit_rate"] for r in got])
        wr = mean_se([r["win_rate"] for r in got])

        def f(x, d=1):
            return (
                "-"
                if x[0] is None
                else f"{x[0]:.{d}f}" + ("" if x[1] is None else f" ± {x[1]:.{d}f}")
            )

        per = ", ".join(
            f"{100 * by_seed[s]['final']['exact_match']:.1f}" if by_seed.get(s) else "missing"
            for s in seeds
        )
        # every round of each seed: an "equal" refinement is a pair DPO skips (chosen = rejected)
        ref_cell = (
            "; ".join(
                " then ".join(
                    f"{q['refined_score']:.2f} vs {q['answer_score']:.2f} ({100 * q['better']:.0f} / "
                    f"{100 * q['worse']:.0f} / {100 * q['equal']:.0f})"
                    for q in r["refiner"]
                )
                for r in got
                if r.get("refiner")
            )
            or "-"
        )
        lines.append(
            f"| {m} | {len(got)} | {f(em)} | {f(ms, 3)} | {f(hb)} | {f(wr)} | {per} | {ref_cell} |"
        )
        rows.append(
            {
                "method": m,
                "seeds": len(got),
                "exact_match": em,
                "mean_score": ms,
                "habit": hb,
                "win_rate_vs_sft": wr,
                "per_seed": {
                    s: by_seed.get(s)
                    and {
                        k: by_seed[s].get(k)
                        for k in (
                            "final",
                            "sft",
                            "win_rate",
                            "standard_error",
                            "refiner",
                            "also_scored",
                        )
                    }
                    for s in seeds
                },
            }
        )
    return "\n".join(lines) + "\n", rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(PRESETS), default="tiny", help="the policy's model")
    ap.add_argument("--preset", default=None, help="default: the testbed preset of --model")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every testbed recipe")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--report-only", action="store_true", help="read the store, run nothing")
    ap.add_argument(
        "--also-score",
        metavar="STEP",
        help="also score the model of this step of each run (e.g. improver_sft) on the eval prompts",
    )
    ap.add_argument(
        "-o", "--output", default=".sgpo/testbed", help="folder for testbed.md and testbed.json"
    )
    ap.add_argument(
        "overrides", nargs="*", help="key=value overrides for every run (e.g. store.url=...)"
    )
    args = ap.parse_args(argv)
    args.preset = args.preset or PRESETS[args.model]
    args.methods = args.methods or (SMOL_METHODS if args.model == "smol" else METHODS)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    results: dict[str, dict[int, dict]] = {m: {} for m in args.methods}
    t_all = time.perf_counter()
    for m, seed, cfg in configs(args.preset, args.methods, args.seeds, args.overrides):
        rep = find_report(cfg)
        if rep is None and not args.report_only:
            from flows.pipeline import sgpo_pipeline

            t0 = time.perf_counter()
            try:
                rep = sgpo_pipeline(config=cfg).testbed
                rep = find_report(cfg) or rep  # with the refiner's quality, read from the store
            except Exception as e:  # a failed run is reported, not hidden; the others go on
                print(f"[testbed] {m} seed {seed}: FAILED {type(e).__name__}: {e}", flush=True)
                rep = None
            print(
                f"[testbed] {m} seed {seed}: ran in {time.perf_counter() - t0:.0f}s (total "
                f"{time.perf_counter() - t_all:.0f}s)",
                flush=True,
            )
        if rep and args.also_score:
            got = score_stage_model(cfg, args.also_score)
            if got:
                rep = {**rep, "also_scored": got}
                print(
                    f"[testbed] {m} seed {seed}: {args.also_score} exact match "
                    f"{100 * got['exact_match']:.1f}%, mean score {got['mean_quality']:.3f}",
                    flush=True,
                )
        if rep:
            results[m][seed] = rep
            print(
                f"[testbed] {m} seed {seed}: exact match {100 * rep['final']['exact_match']:.1f}% (pi_sft "
                f"{100 * rep['sft']['exact_match']:.1f}%), habit {100 * rep['final']['habit_rate']:.1f}%, WR over pi_sft "
                f"{rep['win_rate']:.1f} (SE {rep['standard_error']:.1f})",
                flush=True,
            )
    md, rows = table(results, args.seeds)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "testbed.md").write_text(md)
    (out / "testbed.json").write_text(json.dumps(rows, indent=2, default=str))
    print(md, end="")
    print(
        f"[testbed] {time.perf_counter() - t_all:.0f}s; written {out / 'testbed.md'} and {out / 'testbed.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
