"""The papers' published numbers beside ours: which record of the shipped copy
(sgpo/data/papers/paper_results.json, transcribed by hand; its README says from where) belongs to
which preset and recipe of `sgpo compare`, and how a cell shows it ("25.2 [T3, T6]": the value and
the tables of the paper that report it).

A preset is a paper's setting when it is the model the paper reports (`PAPER_ROWS`); a recipe the
paper does not report on that model, or a benchmark its tables leave out, shows "not reported".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

PAPER_FILE = Path(__file__).resolve().parents[1] / "data" / "papers" / "paper_results.json"
SOURCE = (
    "published numbers: the SGPO paper (Lee et al., 2025) Tables 3-7 and the SAPO paper (Yin et "
    "al., ICLR review) Tables 1-5 (T3 = Table 3 of the preset's paper), transcribed by hand into "
    "sgpo/data/papers/paper_results.json (see its README)"
)

# A column of the comparison -> the records' (benchmark, metric) that fill its paper cell.
SGPO_CELLS: dict[str, tuple[tuple[str, str], ...]] = {
    "AE2 LC": (("AlpacaEval 2.0", "LC (%)"),),
    "AE2 WR": (("AlpacaEval 2.0", "WR (%)"),),
    "Arena-Hard": (("Arena-Hard", "WR (%)"),),
}
_OPEN_LLM = "Open LLM Leaderboard"
SAPO_CELLS: dict[str, tuple[tuple[str, str], ...]] = {
    "ARC": ((f"{_OPEN_LLM}: ARC-Challenge", "score (%)"),),
    "TruthfulQA": ((f"{_OPEN_LLM}: TruthfulQA", "score (%)"),),
    "Winogrande": ((f"{_OPEN_LLM}: Winogrande", "score (%)"),),
    "GSM8K": ((f"{_OPEN_LLM}: GSM8K", "score (%)"),),
    "HellaSwag": ((f"{_OPEN_LLM}: HellaSwag", "score (%)"),),
    "MMLU": ((f"{_OPEN_LLM}: MMLU", "score (%)"),),
    "Open LLM avg": ((f"{_OPEN_LLM}: Average", "score (%)"), (_OPEN_LLM, "average (%)")),
    "IFEval": (("IFEval", "score (%)"),),
    "MT-Bench T1": (("MT-Bench", "first turn (1-10)"),),
    "MT-Bench T2": (("MT-Bench", "second turn (1-10)"),),
    "MT-Bench avg": (("MT-Bench", "average (1-10)"),),
    "AE2 LC": (("AlpacaEval 2.0", "LC WR (%)"),),
    "AE2 WR": (("AlpacaEval 2.0", "WR (%)"),),
    "AE2 length": (("AlpacaEval 2.0", "avg length"),),
}


@dataclass(frozen=True)
class PaperRow:
    """Where a (preset, recipe) stands in a paper: the records' model, and per table the records'
    method(s) (the papers repeat a row across tables, e.g. SGPO in Tables 3, 6 and 7, and within
    one: SAPO's Table 5 lists its default run twice)."""

    paper: str
    model: str
    methods: dict[str, str | tuple[str, ...]] = field(default_factory=dict)

    def reports(self, table: str, method: str) -> bool:
        named = self.methods.get(table, ())
        return method in ((named,) if isinstance(named, str) else named)


def _rows(paper: str, model: str, table: dict[str, dict[str, str]]) -> dict[str, PaperRow]:
    return {recipe: PaperRow(paper, model, methods) for recipe, methods in table.items()}


_SGPO_QWEN25 = _rows(
    "SGPO",
    "Qwen2.5-Base (7B)",
    {
        "sft": {"Table 3": "SFT", "Table 6": "SFT"},
        "dpo": {"Table 3": "DPO"},
        "spin": {"Table 3": "SPIN"},
        "sgpo-dagger": {"Table 3": "SGPO-dagger (SGPO†, no parameter sharing)"},
        "sgpo-double-dagger": {"Table 3": "SGPO-double-dagger (SGPO‡, no improved supervision)"},
        "sgpo": {
            "Table 3": "SGPO",
            "Table 6": "SGPO",
            "Table 7": "SGPO: y_sft only in refining prompt",
        },
        "sgpo-step2": {"Table 6": "SGPO + Step 2"},
        "all-ref": {"Table 7": "SGPO (All Ref): y_sft in training prompt and refining prompt"},
        "no-ref": {"Table 7": "SGPO (No Ref): y_sft in neither prompt"},
    },
)
_SGPO_LLAMA3 = _rows(
    "SGPO",
    "Llama3-Base (8B)",
    {
        "sft": {"Table 3": "SFT", "Table 6": "SFT"},
        "dpo": {"Table 3": "DPO"},
        "spin": {"Table 3": "SPIN", "Table 4": "SPIN (chosen y_sft, rejected initial-policy y)"},
        "sgpo-dagger": {"Table 3": "SGPO-dagger (SGPO†, no parameter sharing)"},
        "sgpo-double-dagger": {"Table 3": "SGPO-double-dagger (SGPO‡, no improved supervision)"},
        "sgpo": {
            "Table 3": "SGPO",
            "Table 4": "SGPO (chosen improved y+, rejected current-policy y)",
            "Table 6": "SGPO",
        },
        "sgpo-diamond": {
            "Table 4": "SGPO-diamond (SGPO⋄; chosen off-policy [symbol lost, text implies y_sft], "
            "rejected current-policy y)"
        },
        "sgpo-step2": {"Table 6": "SGPO + Step 2"},
    },
)
_SGPO_QWEN2 = _rows(
    "SGPO",
    "Qwen2-Base (1.5B)",
    {
        "sgpo-v1": {"Table 5": "SGPO-v1 (y_ext only, separate improver/policy)"},
        "sgpo-v2": {"Table 5": "SGPO-v2 (y_ext only, integrated improver-policy)"},
        "sgpo-v3": {"Table 5": "SGPO-v3 (y_ext + y_imp, separate improver/policy)"},
        "sgpo": {"Table 5": "SGPO (y_ext + y_imp, integrated)"},
    },
)


def _sapo_dpo(model: str, sft: str) -> dict[str, PaperRow]:
    both = ("Table 1", "Table 2")
    return _rows(
        "SAPO",
        model,
        {
            "sft": dict.fromkeys(both, sft),
            "dpo": dict.fromkeys(both, "DPO"),
            "spin": dict.fromkeys(both, "SPIN-DPO (Iter3)"),
            "sapo-dpo": {**dict.fromkeys(both, "SAPO-DPO"), "Table 4": "SAPO-DPO ema-ref"},
            "sapo-dpo-fix-ref": {"Table 4": "SAPO-DPO fix-ref"},
            "sapo-dpo-policy-ref": {"Table 4": "SAPO-DPO policy-ref"},
        },
    )


def _sapo_orpo(model: str, ablations: bool) -> dict[str, PaperRow]:
    both = ("Table 1", "Table 2")
    table: dict[str, dict[str, str | tuple[str, ...]]] = {
        "sft": {"Table 1": "base model (no alignment)"},  # the raw base (Table 2 has no such row)
        "orpo": dict.fromkeys(both, "ORPO"),
        "spin-orpo": dict.fromkeys(both, "SPIN-ORPO (Iter3)"),
        "sapo-orpo": dict.fromkeys(both, "SAPO-ORPO"),
    }
    if ablations:  # Sec. 5.3: the ablations are of LLaMA-3-8B with ORPO
        per_prompt = "SAPO-ORPO, rejected responses per prompt = {}"
        segment = "SAPO-ORPO, segment token length = {}"
        table["sapo-orpo"].update(
            {"Table 3": "SAPO-ORPO (ours)", "Table 5": (per_prompt.format(1), segment.format(256))}
        )
        table.update(
            {
                "sapo-orpo-on-policy": {"Table 3": "on-policy (rejected from the current policy)"},
                "sapo-orpo-no-segment": {"Table 3": "no segment (regenerate the whole response)"},
                "sapo-orpo-rejected-4": {"Table 5": per_prompt.format(4)},
                "sapo-orpo-rejected-8": {"Table 5": per_prompt.format(8)},
                "sapo-orpo-segment-64": {"Table 5": segment.format(64)},
                "sapo-orpo-segment-128": {"Table 5": segment.format(128)},
            }
        )
    return _rows("SAPO", model, table)


PAPER_ROWS: dict[str, dict[str, PaperRow]] = {
    "qwen2.5-7b": _SGPO_QWEN25,
    "llama3-8b": _SGPO_LLAMA3,
    "qwen2-1.5b": _SGPO_QWEN2,
    "sapo-llama3-8b": _sapo_dpo("LLaMA-3-8B", "SFT (Deita-10k)"),
    "sapo-mistral-7b": _sapo_dpo("Mistral-7B", "SFT (wandb/mistral-7b-zephyr-sft)"),
    "sapo-orpo-llama3-8b": _sapo_orpo("LLaMA-3-8B", ablations=True),
    "sapo-orpo-mistral-7b": _sapo_orpo("Mistral-7B", ablations=False),
}
SAPO_PRESETS = tuple(p for p, rows in PAPER_ROWS.items() if p.startswith("sapo"))


@cache
def paper_records() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(PAPER_FILE.read_text())["records"])


def cells_of(preset: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """The benchmark columns of a preset's comparison: the SAPO paper's or the SGPO paper's."""
    return SAPO_CELLS if preset in SAPO_PRESETS else SGPO_CELLS


def records_for(preset: str, method: str) -> list[dict[str, Any]]:
    """The paper records of a (preset, recipe): every table the paper reports it in."""
    row = PAPER_ROWS.get(preset, {}).get(method)
    if row is None:
        return []
    return [
        r
        for r in paper_records()
        if r["paper"] == row.paper
        and r["model"] == row.model
        and row.reports(r["table"], r["method"])
    ]


def _short(table: str) -> str:
    return "T" + table.removeprefix("Table ") if table.startswith("Table ") else table


def _number(value: float) -> str:
    return str(value)  # 25.2, 25.24, 57.0, 1200: as the record holds it


def paper_cells(preset: str, method: str) -> dict[str, str]:
    """Column -> the paper's number(s) with their tables ("25.2 [T3, T6] / 25.24 [T7]"), for every
    column of the preset's layout; "not reported" where the paper has none, "n/a (not a paper
    setting)" on a preset that is no paper's."""
    cells = cells_of(preset)
    if preset not in PAPER_ROWS:
        return dict.fromkeys(cells, "n/a (not a paper setting)")
    records = records_for(preset, method)
    out = {}
    for column, keys in cells.items():
        by_value: dict[float, list[str]] = {}
        for r in records:
            if (r["benchmark"], r["metric"]) in keys:
                tables = by_value.setdefault(r["value"], [])
                if _short(r["table"]) not in tables:
                    tables.append(_short(r["table"]))
        out[column] = (
            " / ".join(f"{_number(v)} [{', '.join(t)}]" for v, t in by_value.items())
            if by_value
            else "not reported"
        )
    return out
