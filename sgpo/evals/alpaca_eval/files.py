"""The official AlpacaEval files: annotations, instruction difficulty, gamed-baseline rows (hub
dataset ``tatsu-lab/alpaca_eval``) and published GLM weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

HUB_REPO_ID = "tatsu-lab/alpaca_eval"


def load_annotations(path: str | Path) -> pd.DataFrame:
    """Load an official AlpacaEval ``annotations.json`` (list of records) or a ``.jsonl`` of records.

    Columns are kept as in the file (``instruction``, ``output_1``, ``generator_1``, ``output_2``,
    ``generator_2``, ``annotator``, ``preference``, ``raw_completion``, ...). ``preference`` is
    coerced to float (``None`` -> NaN). The row order (and default RangeIndex) is preserved: the LC
    GLM looks up the instruction difficulty by row position, as upstream does.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
        if isinstance(records, Mapping):
            records = [records]
    df = pd.DataFrame.from_records(records)
    if "preference" in df.columns:
        df["preference"] = pd.to_numeric(df["preference"], errors="coerce").astype(float)
    return df


def load_instruction_difficulty(path: str | Path) -> pd.Series:
    """Read an ``instruction_difficulty.csv`` (official hub file or the offline surrogate).

    Same as upstream ``pd.read_csv(path, index_col=0).squeeze()``; the index is the row of the
    805-instruction AlpacaEval set.
    """
    s = pd.read_csv(path, index_col=0)
    if isinstance(s, pd.DataFrame):
        if "instruction_difficulty" in s.columns:
            s = s["instruction_difficulty"]
        else:
            s = s.squeeze("columns")
    s = s.astype(float)
    s.name = "instruction_difficulty"
    return s


def download_instruction_difficulty(cache_dir: str | Path | None = None) -> pd.Series:
    """Download the official ``instruction_difficulty.csv`` from the HF hub (needs network)."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id=HUB_REPO_ID,
        filename="instruction_difficulty.csv",
        repo_type="dataset",
        cache_dir=cache_dir,
    )
    return load_instruction_difficulty(path)


def download_gamed_annotations(cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Download upstream ``df_gamed.csv`` (gamed-baseline rows for the GLM regulariser; needs network)."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id=HUB_REPO_ID, filename="df_gamed.csv", repo_type="dataset", cache_dir=cache_dir
    )
    return pd.read_csv(path).drop(columns=["model"], errors="ignore")


def instruction_difficulty_from_gamed(df_gamed: pd.DataFrame) -> pd.Series:
    """Upstream's own difficulty source: ``df_gamed.drop_duplicates("index")["instruction_difficulty"]``."""
    return df_gamed.drop_duplicates("index")["instruction_difficulty"].astype(float)


def load_glm_weights(path: str | Path) -> pd.DataFrame:
    """Read a published GLM weights CSV (one row per model, columns :data:`GLM_FEATURES`)."""
    return pd.read_csv(path, index_col=0)
