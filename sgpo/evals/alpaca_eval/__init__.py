"""AlpacaEval 2.0, re-implemented from tatsu-lab/alpaca_eval (0.6.6): the judge's logprob rule, raw /
discrete / length-controlled win rates, the LC GLM's inputs and the leaderboard report.

Why a re-implementation, what is reproduced and to which tolerance: docs/evaluation.md#alpacaeval-20.
The judge itself (prompt, order, one-token verdict) is sgpo.evals.pairwise.

Modules: `preference` (judge logprobs -> preference, display order), `files` (the official files),
`win_rate`, `length_controlled` (the GLM), `lc_inputs` (where difficulty and gamed rows come from),
`report` (the leaderboard report, one code path for `sgpo metrics` and the judge stages).
"""

from sgpo.evals.alpaca_eval.files import (
    HUB_REPO_ID,
    download_gamed_annotations,
    download_instruction_difficulty,
    instruction_difficulty_from_gamed,
    load_annotations,
    load_glm_weights,
    load_instruction_difficulty,
)
from sgpo.evals.alpaca_eval.lc_inputs import (
    AUTO,
    OFFLINE_DIFFICULTY_FILE,
    OFFLINE_GAMED_FILE,
    LCInputError,
    default_lc_offline_dir,
    resolve_gamed_annotations,
    resolve_instruction_difficulty,
    resolve_lc_inputs,
)
from sgpo.evals.alpaca_eval.length_controlled import (
    GLM_FEATURES,
    LENGTH_CONTROLLED_V1,
    length_controlled_win_rate,
    predict_lc_win_rate_from_weights,
)
from sgpo.evals.alpaca_eval.preference import (
    JUDGE_DENOMINATOR_TOKENS,
    JUDGE_NUMERATOR_TOKEN,
    official_model_first,
    preference_from_top_logprobs,
    top_logprobs_from_completion,
)
from sgpo.evals.alpaca_eval.report import (
    LC_MIN_ROWS,
    UNREGULARISED_NOTE,
    evaluate_annotations,
    leaderboard_report,
)
from sgpo.evals.alpaca_eval.win_rate import win_rate_metrics

__all__ = [
    "AUTO",
    "GLM_FEATURES",
    "HUB_REPO_ID",
    "JUDGE_DENOMINATOR_TOKENS",
    "JUDGE_NUMERATOR_TOKEN",
    "LC_MIN_ROWS",
    "LENGTH_CONTROLLED_V1",
    "OFFLINE_DIFFICULTY_FILE",
    "OFFLINE_GAMED_FILE",
    "UNREGULARISED_NOTE",
    "LCInputError",
    "default_lc_offline_dir",
    "download_gamed_annotations",
    "download_instruction_difficulty",
    "evaluate_annotations",
    "instruction_difficulty_from_gamed",
    "leaderboard_report",
    "length_controlled_win_rate",
    "load_annotations",
    "load_glm_weights",
    "load_instruction_difficulty",
    "official_model_first",
    "predict_lc_win_rate_from_weights",
    "preference_from_top_logprobs",
    "resolve_gamed_annotations",
    "resolve_instruction_difficulty",
    "resolve_lc_inputs",
    "top_logprobs_from_completion",
    "win_rate_metrics",
]
