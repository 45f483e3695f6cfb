"""``metrics`` sub-command: compute AlpacaEval 2.0 / Arena-Hard v0.1 numbers from official-format files.

Usage (standalone: ``python -m sgpo.metrics.cli metrics ...``; hooked into the ``sgpo`` CLI through
:func:`add_metrics_parser`)::

    metrics alpaca-eval ANNOTATIONS.json [--instruction-difficulty CSV|hub|none]
                                         [--gamed-annotations CSV|hub]
    metrics arena-hard JUDGMENTS.jsonl [MORE.jsonl ...] [--baseline gpt-4-0314] [--rounds 100]
                                       [--seed 42] [--weight 3] [--first-game-only] [--reparse]

Each prints exactly one JSON object on stdout (NaN printed as ``null``).

``--instruction-difficulty`` (LC win rate): a CSV path; ``hub`` downloads the official
``instruction_difficulty.csv`` (network); ``none`` skips LC. When omitted, the offline surrogate
``<shared data>/alpaca_eval/instruction_difficulty_surrogate.csv`` is used if present (NOT upstream;
reported in ``difficulty_source``), otherwise LC fields are ``null``.
``--gamed-annotations`` (upstream ``df_gamed.csv``, a CSV path or ``hub``) enables upstream's
gamed-baseline regularisation of the LC GLM; without it the unregularised GLM is fitted
(``lc_regularized: false``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import shared_data_dir

__all__ = ["add_metrics_parser", "main", "run_alpaca_eval", "run_arena_hard"]

SURROGATE_DIFFICULTY = Path("alpaca_eval") / "instruction_difficulty_surrogate.csv"


def _jsonable(obj: Any) -> Any:
    """Make the payload strict JSON: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (AttributeError, ValueError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(_jsonable(payload), allow_nan=False, sort_keys=False) + "\n")
    sys.stdout.flush()


def run_alpaca_eval(args: argparse.Namespace) -> int:
    from . import alpaca_eval as ae

    df = ae.load_annotations(args.annotations)
    # The same resolution as the judge stages; the CLI's default difficulty is the offline surrogate.
    lc = ae.resolve_lc_inputs(args.instruction_difficulty, args.gamed_annotations,
                              fallback_difficulty=shared_data_dir() / SURROGATE_DIFFICULTY)
    difficulty, difficulty_source, gamed, gamed_source = lc["difficulty"], lc["difficulty_source"], lc["gamed"], lc["gamed_source"]
    metrics = ae.evaluate_annotations(df, difficulty, gamed_annotations=gamed)

    def first(col: str):
        return str(df[col].dropna().iloc[0]) if col in df.columns and df[col].notna().any() else None

    payload = {
        "model": first("generator_2"),
        "baseline": first("generator_1"),
        "win_rate": metrics["win_rate"],
        "standard_error": metrics["standard_error"],
        "discrete_win_rate": metrics["discrete_win_rate"],
        "lc_win_rate": metrics["lc_win_rate"],
        "lc_standard_error": metrics["lc_standard_error"],
        "n": metrics["n_total"],
        "n_wins": metrics["n_wins"],
        "n_wins_base": metrics["n_wins_base"],
        "n_draws": metrics["n_draws"],
        "avg_length": metrics.get("avg_length"),
        "difficulty_source": difficulty_source,
        "lc_regularized": metrics.get("lc_regularized"),
        "gamed_source": gamed_source,
    }
    if payload["lc_win_rate"] is not None and not payload["lc_regularized"]:
        # Upstream regularises the GLM with its gamed-baseline rows (df_gamed.csv, hub only); without
        # them the fit is upstream's unregularised one, which can sit ~1-2 points from the official LC.
        payload["lc_note"] = ae.UNREGULARISED_NOTE + " (--gamed-annotations hub, and --instruction-difficulty hub)"
    _print_json(payload)
    return 0


def run_arena_hard(args: argparse.Namespace) -> int:
    from . import arena_hard as ah

    records = []
    for path in args.judgments:
        records.extend(ah.load_judgments(path))
    result = ah.score(
        records,
        baseline=args.baseline,
        rounds=args.rounds,
        seed=args.seed,
        weight=args.weight,
        first_game_only=args.first_game_only,
        reparse=args.reparse,
    )
    _print_json({"baseline": args.baseline, "rounds": args.rounds, "seed": args.seed, "models": result})
    return 0


def add_metrics_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register the ``metrics`` sub-command (with ``alpaca-eval`` and ``arena-hard``) on ``subparsers``.

    Each leaf parser sets ``func`` (``args.func(args) -> int``) via ``set_defaults``.
    """
    from .arena_hard import DEFAULT_BASELINE, DEFAULT_SEED, DEFAULT_WEIGHT

    metrics = subparsers.add_parser(
        "metrics",
        help="compute AlpacaEval 2.0 / Arena-Hard v0.1 metrics from official-format files",
        description="Compute benchmark metrics exactly as the official implementations; prints one JSON object.",
    )
    sub = metrics.add_subparsers(dest="metrics_command", metavar="{alpaca-eval,arena-hard}")
    sub.required = True

    pa = sub.add_parser("alpaca-eval", help="AlpacaEval 2.0 win rate / LC win rate from annotations.json")
    pa.add_argument("annotations", help="official annotations.json (output_1 = baseline, output_2 = model)")
    pa.add_argument(
        "--instruction-difficulty",
        default=None,
        metavar="CSV|hub|none",
        help="instruction_difficulty.csv for the LC GLM; 'hub' downloads the official file; "
        "default: the offline surrogate in the shared data folder if present",
    )
    pa.add_argument(
        "--gamed-annotations",
        default=None,
        metavar="CSV|hub",
        help="upstream df_gamed.csv (gamed-baseline rows) to regularise the LC GLM like upstream",
    )
    pa.set_defaults(func=run_alpaca_eval)

    pr = sub.add_parser("arena-hard", help="Arena-Hard v0.1 score and 95%% CI from judgment jsonl files")
    pr.add_argument("judgments", nargs="+", help="official judgment .jsonl file(s) or folder(s)")
    pr.add_argument("--baseline", default=DEFAULT_BASELINE)
    pr.add_argument("--rounds", type=int, default=100, help="bootstrap rounds (default 100, as upstream)")
    pr.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (default 42, as upstream)")
    pr.add_argument("--weight", type=int, default=DEFAULT_WEIGHT, help="rows per strong verdict (default 3)")
    pr.add_argument("--first-game-only", action="store_true")
    pr.add_argument("--reparse", action="store_true", help="re-parse verdicts from the judgment text")
    pr.set_defaults(func=run_arena_hard)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgpo.metrics.cli")
    subparsers = parser.add_subparsers(dest="command", metavar="{metrics}")
    subparsers.required = True
    add_metrics_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
