"""``metrics`` sub-command: compute AlpacaEval 2.0 / Arena-Hard v0.1 numbers from official-format files.

Usage (standalone: ``python -m sgpo.cli.metrics metrics ...``; hooked into the ``sgpo`` CLI through
:func:`add_metrics_parser`)::

    metrics alpaca-eval ANNOTATIONS.json [--instruction-difficulty auto|CSV|hub|none]
                                         [--gamed-annotations auto|CSV|hub|none] [--lc-offline-dir DIR]
    metrics arena-hard JUDGMENTS.jsonl [MORE.jsonl ...] [--baseline gpt-4-0314] [--rounds 100]
                                       [--seed 42] [--weight 3] [--first-game-only] [--reparse]

Each prints exactly one JSON object on stdout (NaN printed as ``null``).

``--instruction-difficulty`` and ``--gamed-annotations`` (the LC GLM's inputs, upstream
``instruction_difficulty.csv`` and ``df_gamed.csv``): ``auto`` (default) takes the hub files when the
hub is reachable, else the offline reconstructions in ``--lc-offline-dir`` (default
``<shared data>/alpaca_eval``), exactly as the judge stage does (one function,
``alpaca_eval.resolve_lc_inputs``); a CSV path; ``hub``; ``none`` (no LC / the unregularised GLM,
``lc_regularized: false``). The sources used are printed (``difficulty_source``, ``gamed_source``,
``lc_hub_error``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_metrics_parser", "main", "run_alpaca_eval", "run_arena_hard"]

SURROGATE_DIFFICULTY = Path("alpaca_eval") / "instruction_difficulty_surrogate.csv"


class MetricsInputError(ValueError):
    """An input file that cannot be scored; the message is one line naming the file (exit code 2)."""


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise MetricsInputError(f"{path}: no such file (expected {what})")
    if path.is_dir():
        raise MetricsInputError(f"{path} is a folder, not {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise MetricsInputError(f"{path} is not UTF-8 text (expected {what})") from None
    except OSError as e:
        raise MetricsInputError(f"{path} cannot be read: {e.strerror or e}") from None
    if not text.strip():
        raise MetricsInputError(f"{path} is empty (expected {what})")
    return text


def _json_lines(path: Path, text: str, what: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsInputError(
                f"{path} line {n} is not JSON ({e.msg}); expected {what}"
            ) from None
        if not isinstance(obj, dict):
            raise MetricsInputError(
                f"{path} line {n} is a JSON {type(obj).__name__}, not an object; expected {what}"
            )
        out.append(obj)
    return out


ARENA_HARD_WHAT = "Arena-Hard judgment .jsonl: one object per line with question_id, model, games"


def _arena_hard_records(arg: str) -> list[dict[str, Any]]:
    """Judgment records of a file or folder, each checked for the keys the score needs."""
    path = Path(arg)
    files = [path]
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise MetricsInputError(
                f"{path} is a folder with no .jsonl files (expected {ARENA_HARD_WHAT})"
            )
    records: list[dict[str, Any]] = []
    for file in files:
        for n, rec in enumerate(
            _json_lines(file, _read_text(file, ARENA_HARD_WHAT), ARENA_HARD_WHAT), 1
        ):
            missing = [k for k in ("model", "games") if k not in rec]
            if "question_id" not in rec and "uid" not in rec:
                missing.insert(0, "question_id")
            if missing or not isinstance(rec["games"], list):
                got = ", ".join(sorted(rec)[:8]) or "nothing"
                raise MetricsInputError(
                    f"{file} record {n} is not an Arena-Hard judgment (missing {', '.join(missing) or 'a games list'}; "
                    f"has {got})"
                )
            records.append(rec)
    return records


ALPACA_WHAT = (
    "AlpacaEval annotations: a JSON list (or .jsonl) of objects with output_1, output_2, preference"
)


def _alpaca_annotations(arg: str):
    """The annotations as `alpaca_eval.load_annotations` reads them, after checking they can be scored."""
    import pandas as pd

    from sgpo.evals import alpaca_eval as ae

    path = Path(arg)
    text = _read_text(path, ALPACA_WHAT)
    if path.suffix == ".jsonl":
        records: Any = _json_lines(path, text, ALPACA_WHAT)
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetricsInputError(
                f"{path} is not JSON ({e.msg} at line {e.lineno}); expected {ALPACA_WHAT}"
            ) from None
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise MetricsInputError(
                f"{path} holds a JSON {type(records).__name__}, not a list of objects; expected {ALPACA_WHAT}"
            )
    if not records:
        raise MetricsInputError(f"{path} holds no annotations (expected {ALPACA_WHAT})")
    missing = sorted({"preference", "output_2"} - set().union(*(r.keys() for r in records)))
    if missing:
        raise MetricsInputError(
            f"{path}: no annotation has {', '.join(missing)} (expected {ALPACA_WHAT})"
        )
    if (
        pd.to_numeric(pd.Series([r.get("preference") for r in records]), errors="coerce")
        .isna()
        .all()
    ):
        raise MetricsInputError(
            f"{path}: no annotation has a numeric preference (1 = output_1, 2 = output_2)"
        )
    return ae.load_annotations(path)


def _one_line_errors(command: str):
    """Input problems become one line on stderr and exit code 2, not a traceback."""

    def wrap(func):
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except MetricsInputError as e:
                msg = str(e)
            except (
                OSError,
                ValueError,
                KeyError,
            ) as e:  # a support file (difficulty CSV...) or the scoring
                msg = f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)
            sys.stderr.write(f"sgpo metrics {command}: error: {' '.join(msg.split())}\n")
            return 2

        run.__name__ = func.__name__
        run.__doc__ = func.__doc__
        return run

    return wrap


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


@_one_line_errors("alpaca-eval")
def run_alpaca_eval(args: argparse.Namespace) -> int:
    from sgpo.evals import alpaca_eval as ae

    df = _alpaca_annotations(args.annotations)
    # The same resolution as the judge stages: 'auto' = the hub files, else the offline reconstructions.
    lc = ae.resolve_lc_inputs(
        args.instruction_difficulty, args.gamed_annotations, offline_dir=args.lc_offline_dir
    )
    difficulty, difficulty_source, gamed, gamed_source = (
        lc["difficulty"],
        lc["difficulty_source"],
        lc["gamed"],
        lc["gamed_source"],
    )
    metrics = ae.evaluate_annotations(df, difficulty, gamed_annotations=gamed)

    def first(col: str):
        return (
            str(df[col].dropna().iloc[0]) if col in df.columns and df[col].notna().any() else None
        )

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
        "lc_hub_error": lc["hub_error"],
    }
    if payload["lc_win_rate"] is not None and not payload["lc_regularized"]:
        # Upstream regularises the GLM with its gamed-baseline rows (df_gamed.csv, hub only); without
        # them the fit is upstream's unregularised one, which can sit ~1-2 points from the official LC.
        payload["lc_note"] = (
            ae.UNREGULARISED_NOTE + " (--gamed-annotations hub, and --instruction-difficulty hub)"
        )
    _print_json(payload)
    return 0


@_one_line_errors("arena-hard")
def run_arena_hard(args: argparse.Namespace) -> int:
    from sgpo.evals.arena_hard import metrics as ah

    records = []
    for path in args.judgments:
        records.extend(_arena_hard_records(path))
    result = ah.score(
        records,
        baseline=args.baseline,
        rounds=args.rounds,
        seed=args.seed,
        weight=args.weight,
        first_game_only=args.first_game_only,
        reparse=args.reparse,
    )
    _print_json(
        {"baseline": args.baseline, "rounds": args.rounds, "seed": args.seed, "models": result}
    )
    return 0


def add_metrics_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``metrics`` sub-command (with ``alpaca-eval`` and ``arena-hard``) on ``subparsers``.

    Each leaf parser sets ``func`` (``args.func(args) -> int``) via ``set_defaults``.
    """
    from sgpo.evals.arena_hard.metrics import DEFAULT_BASELINE, DEFAULT_SEED, DEFAULT_WEIGHT

    metrics = subparsers.add_parser(
        "metrics",
        help="compute AlpacaEval 2.0 / Arena-Hard v0.1 metrics from official-format files",
        description="Compute benchmark metrics exactly as the official implementations; prints one JSON object.",
    )
    sub = metrics.add_subparsers(dest="metrics_command", metavar="{alpaca-eval,arena-hard}")
    sub.required = True

    pa = sub.add_parser(
        "alpaca-eval", help="AlpacaEval 2.0 win rate / LC win rate from annotations.json"
    )
    pa.add_argument(
        "annotations", help="official annotations.json (output_1 = baseline, output_2 = model)"
    )
    pa.add_argument(
        "--instruction-difficulty",
        default="auto",
        metavar="auto|CSV|hub|none",
        help="instruction_difficulty.csv for the LC GLM; default 'auto': the hub file when reachable, else the "
        "offline reconstruction (--lc-offline-dir); 'none' skips LC",
    )
    pa.add_argument(
        "--gamed-annotations",
        default="auto",
        metavar="auto|CSV|hub|none",
        help="upstream df_gamed.csv (gamed-baseline rows) regularising the LC GLM like upstream; default 'auto' as "
        "above; 'none' fits the unregularised GLM (not the leaderboard's LC)",
    )
    pa.add_argument(
        "--lc-offline-dir",
        default=None,
        metavar="DIR",
        help="folder with the offline reconstructions (default: <shared data>/alpaca_eval)",
    )
    pa.set_defaults(func=run_alpaca_eval)

    pr = sub.add_parser(
        "arena-hard", help="Arena-Hard v0.1 score and 95%% CI from judgment jsonl files"
    )
    pr.add_argument("judgments", nargs="+", help="official judgment .jsonl file(s) or folder(s)")
    pr.add_argument("--baseline", default=DEFAULT_BASELINE)
    pr.add_argument(
        "--rounds", type=int, default=100, help="bootstrap rounds (default 100, as upstream)"
    )
    pr.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (default 42, as upstream)"
    )
    pr.add_argument(
        "--weight", type=int, default=DEFAULT_WEIGHT, help="rows per strong verdict (default 3)"
    )
    pr.add_argument("--first-game-only", action="store_true")
    pr.add_argument(
        "--reparse", action="store_true", help="re-parse verdicts from the judgment text"
    )
    pr.set_defaults(func=run_arena_hard)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgpo.cli.metrics")
    subparsers = parser.add_subparsers(dest="command", metavar="{metrics}")
    subparsers.required = True
    add_metrics_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
