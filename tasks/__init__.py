"""The stages: one module per stage, `tasks/<name>.py`, declaring the Stage `<name>` (sgpo.core.stage).

No stage imports another; what two stages share lives in `sgpo/`. Each module runs alone:
`python -m tasks.<name> [CONFIG] [key=value ...] --<input> URI ...`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sgpo.core.stage import Stage

PIPELINE_STAGES = (
    "prepare",
    "base_model",
    "sft",
    "sample",
    "annotate",
    "ppl_filter",
    "improver_sft",
    "pairs",
    "dpo",
    "sapo",
    "judge",
    "testbed_report",
)
EVALUATION_STAGES = (
    "base_model",
    "alpaca_eval_generate",
    "alpaca_eval_judge",
    "arena_hard_generate",
    "arena_hard_judge",
    "pairwise",
    "mt_bench_generate",
    "mt_bench_judge",
    "lm_eval",
)
REPORT_STAGES = ("report",)  # the end of every flow: figures + HTML report (tasks/report.py)
ALL_STAGES = tuple(dict.fromkeys(PIPELINE_STAGES + EVALUATION_STAGES + REPORT_STAGES))


def get_stage(name: str) -> Stage:
    """The declared stage `name` (imports its module)."""
    if name not in ALL_STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(ALL_STAGES)}")
    return getattr(importlib.import_module(f"tasks.{name}"), name)
