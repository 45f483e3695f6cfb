"""Where the LC GLM's inputs come from: instruction difficulty and gamed-baseline rows from the
hub, a file, or the offline reconstructions ('auto': the hub when reachable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from sgpo.evals.alpaca_eval.files import (
    HUB_REPO_ID,
    download_gamed_annotations,
    download_instruction_difficulty,
    instruction_difficulty_from_gamed,
    load_instruction_difficulty,
)


class LCInputError(ValueError):
    """An LC input (instruction difficulty, gamed-baseline rows) that cannot be read; names the source."""


def resolve_instruction_difficulty(
    source: str | Path | None, *, fallback: Path | None = None
) -> tuple[pd.Series | None, str | None]:
    """(difficulty, where it came from): 'hub' downloads the official file, 'none' skips LC, a path is
    read; None uses `fallback` when that file exists (else no LC)."""
    if source is None:
        if fallback is not None and Path(fallback).is_file():
            return load_instruction_difficulty(fallback), f"surrogate:{fallback}"
        return None, None
    text = str(source)
    if text.lower() == "none":
        return None, None
    if text.lower() == "hub":
        try:
            return (
                download_instruction_difficulty(),
                f"hub:{HUB_REPO_ID}/instruction_difficulty.csv",
            )
        except Exception as e:
            raise LCInputError(
                f"instruction difficulty 'hub': could not download {HUB_REPO_ID}/instruction_difficulty.csv "
                f"({type(e).__name__}: {e}); give a local CSV path, or 'none' to skip the LC win rate"
            ) from e
    try:
        return load_instruction_difficulty(text), f"file:{text}"
    except (OSError, ValueError, KeyError) as e:
        raise LCInputError(f"instruction difficulty: cannot read {text!r}: {e}") from e


def resolve_gamed_annotations(source: str | Path | None) -> tuple[pd.DataFrame | None, str | None]:
    """(upstream df_gamed rows, where they came from); None / 'none': no regulariser."""
    if source is None or str(source).lower() == "none":
        return None, None
    text = str(source)
    if text.lower() == "hub":
        try:
            return download_gamed_annotations(), f"hub:{HUB_REPO_ID}/df_gamed.csv"
        except Exception as e:
            raise LCInputError(
                f"gamed annotations 'hub': could not download {HUB_REPO_ID}/df_gamed.csv "
                f"({type(e).__name__}: {e}); give a local CSV path, or 'none' for the unregularised GLM"
            ) from e
    try:
        return pd.read_csv(text).drop(columns=["model"], errors="ignore"), f"file:{text}"
    except (OSError, ValueError) as e:
        raise LCInputError(f"gamed annotations: cannot read {text!r}: {e}") from e


# Offline reconstructions of the two hub files (NOT upstream; shared data README: mean |LC error| 0.48,
# max 1.9 points on 22 leaderboard models). Used by 'auto' when the hub is unreachable.
OFFLINE_DIFFICULTY_FILE = "instruction_difficulty_offline_reconstruction.csv"
OFFLINE_GAMED_FILE = "df_gamed_offline_reconstruction.csv"
AUTO = "auto"


def default_lc_offline_dir() -> Path:
    """`<shared data>/alpaca_eval` ($SGPO_SHARED_DATA or ../shared/data): where the offline reconstructions live."""
    from sgpo.data.shared import shared_data_dir

    return shared_data_dir() / "alpaca_eval"


def _offline_source(path: Path) -> str:
    import hashlib

    return (
        f"offline-reconstruction:{path}@sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    )


def _resolve_auto(
    difficulty: str | Path | None, gamed: str | Path | None, offline_dir: str | Path | None
) -> tuple[str | Path | None, str | Path | None, dict[str, Any]]:
    """Replace 'auto' by the hub (tried once, for both files) or, when it is unreachable, by the offline files."""
    wants = [x is not None and str(x).lower() == AUTO for x in (difficulty, gamed)]
    info: dict[str, Any] = {"hub_error": None, "offline_dir": None}
    if not any(wants):
        return difficulty, gamed, info
    loaded: dict[str, Any] = {}
    try:
        if wants[0]:
            loaded["difficulty"] = (
                download_instruction_difficulty(),
                f"hub:{HUB_REPO_ID}/instruction_difficulty.csv",
            )
        if wants[1]:
            loaded["gamed"] = (download_gamed_annotations(), f"hub:{HUB_REPO_ID}/df_gamed.csv")
        info["loaded"] = loaded
        return difficulty, gamed, info
    except (
        Exception
    ) as e:  # unreachable hub (offline, firewalled, rate limited): the offline reconstructions
        info["hub_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    folder = Path(offline_dir).expanduser() if offline_dir else default_lc_offline_dir()
    info["offline_dir"] = str(folder)
    files = {"difficulty": folder / OFFLINE_DIFFICULTY_FILE, "gamed": folder / OFFLINE_GAMED_FILE}
    for key, want in zip(("difficulty", "gamed"), wants):
        if want and not files[key].is_file():
            raise LCInputError(
                f"LC input {key!r} is 'auto' but the hub is unreachable ({info['hub_error']}) and {files[key]} does not "
                f"exist: set lc_offline_dir (--lc-offline-dir) to the folder holding {OFFLINE_DIFFICULTY_FILE} and "
                f"{OFFLINE_GAMED_FILE}, give CSV paths, or 'none' to skip the LC win rate"
            )
    return (
        (files["difficulty"] if wants[0] else difficulty),
        (files["gamed"] if wants[1] else gamed),
        info,
    )


def resolve_lc_inputs(
    difficulty: str | Path | None = AUTO,
    gamed: str | Path | None = AUTO,
    *,
    fallback_difficulty: Path | None = None,
    offline_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Both LC inputs and their sources; with gamed rows but no difficulty, the difficulty is their column.

    'auto' (the default of the judge stage and of `sgpo metrics alpaca-eval`): the hub files when the
    hub is reachable, else the offline reconstructions in `offline_dir` (default
    `default_lc_offline_dir()`), so LC is regularised as upstream unless a caller asks for 'none'.
    `hub_error` says why the hub was not used."""
    difficulty, gamed, info = _resolve_auto(difficulty, gamed, offline_dir)
    loaded = info.pop("loaded", {})
    if "difficulty" in loaded:
        diff, diff_source = loaded["difficulty"]
    elif (
        difficulty is not None
        and Path(str(difficulty)).name == OFFLINE_DIFFICULTY_FILE
        and Path(str(difficulty)).is_file()
    ):
        diff, diff_source = (
            load_instruction_difficulty(difficulty),
            _offline_source(Path(difficulty)),
        )
    else:
        diff, diff_source = resolve_instruction_difficulty(difficulty, fallback=fallback_difficulty)
    if "gamed" in loaded:
        gamed_df, gamed_source = loaded["gamed"]
    else:
        gamed_df, gamed_source = resolve_gamed_annotations(gamed)
        if gamed_df is not None and Path(str(gamed)).name == OFFLINE_GAMED_FILE:
            gamed_source = _offline_source(Path(gamed))
    if (
        diff is None
        and gamed_df is not None
        and (difficulty is None or str(difficulty).lower() != "none")
    ):
        diff, diff_source = (
            instruction_difficulty_from_gamed(gamed_df),
            f"{gamed_source} (instruction_difficulty column)",
        )
    return {
        "difficulty": diff,
        "difficulty_source": diff_source,
        "gamed": gamed_df,
        "gamed_source": gamed_source,
        "hub_error": info["hub_error"],
    }
