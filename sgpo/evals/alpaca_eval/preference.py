"""The judge's verdict: AlpacaEval's logprob rule (``completion_parsers.logprob_parser`` with the
``weighted_alpaca_eval_gpt4_turbo`` settings) and its display-order randomisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# weighted_alpaca_eval_gpt4_turbo/configs.yaml: completion_parser_kwargs
JUDGE_NUMERATOR_TOKEN = "m"  # "m" identifies the output shown first in the prompt
JUDGE_DENOMINATOR_TOKENS = ("m", "M")  # "M" identifies the output shown second


def _token_logprob_map(top_logprobs: Any) -> dict[str, float]:
    """Normalise top logprobs into ``{token: logprob}`` (later duplicates win, as upstream)."""
    if isinstance(top_logprobs, Mapping):
        if "top_logprobs" in top_logprobs:  # a single OpenAI `content[i]` entry
            return _token_logprob_map(top_logprobs["top_logprobs"])
        if "token" in top_logprobs and "logprob" in top_logprobs:  # a single {token, logprob}
            return {str(top_logprobs["token"]): float(top_logprobs["logprob"])}
        return {str(k): float(v) for k, v in top_logprobs.items()}
    out: dict[str, float] = {}
    for item in top_logprobs:
        if isinstance(item, Mapping):
            token, logprob = item["token"], item["logprob"]
        elif hasattr(item, "token") and hasattr(item, "logprob"):  # openai SDK TopLogprob objects
            token, logprob = item.token, item.logprob
        else:  # (token, logprob) pairs
            token, logprob = item
        out[str(token)] = float(logprob)
    return out


def preference_from_top_logprobs(
    top_logprobs: Mapping[str, float] | Sequence[Any],
    *,
    model_first: bool,
    numerator_token: str = JUDGE_NUMERATOR_TOKEN,
    denominator_tokens: Sequence[str] = JUDGE_DENOMINATOR_TOKENS,
) -> float | None:
    """AlpacaEval preference from the judge's first-token top logprobs (``weighted_alpaca_eval_gpt4_turbo``).

    The judge prompt shows two outputs labelled ``"m"`` (shown first) and ``"M"`` (shown second)
    and the judge answers with a single token. Upstream ``logprob_parser`` (``is_binarize=False``)
    returns ``2 - p`` with ``p = P(m) / (P(m) + P(M))`` computed from the *top* logprobs of the first
    generated token only (a token absent from the top list gets probability 0), i.e. a preference in
    ``[1, 2]`` where 1 means the output shown first is better.

    The return value uses the AlpacaEval annotation convention, **independent of display order**:
    ``output_1`` = baseline, ``output_2`` = the evaluated model; ``1.0`` = baseline better,
    ``2.0`` = model better, ``1.5`` = indifferent.

    Parameters
    ----------
    top_logprobs
        Either a mapping ``{token: logprob}``, or a list of ``{"token": ..., "logprob": ...}`` dicts
        (the OpenAI ``choices[0].logprobs.content[0].top_logprobs`` format; openai SDK objects with
        ``.token``/``.logprob`` and ``(token, logprob)`` pairs are accepted too), or one OpenAI
        ``content[i]`` dict holding ``top_logprobs``. Natural-log probabilities.
    model_first
        ``True`` if the evaluated model's output was shown first (as ``"m"``) and the baseline second;
        ``False`` for the canonical order (baseline first). Upstream randomises the order per
        instruction and maps a switched annotation back with ``3 - preference``; this flag does that.

    Returns
    -------
    float or None
        ``None`` when neither token appears in the top logprobs (upstream returns NaN, which is then
        dropped from the win rate).
    """
    tokens = list(denominator_tokens) + [numerator_token]
    lp = {t: v for t, v in _token_logprob_map(top_logprobs).items() if t in tokens}
    if not lp:
        return None
    missing = float("-inf")
    numerator = lp.get(numerator_token, missing)
    denominator = np.logaddexp.reduce([lp.get(t, missing) for t in denominator_tokens])
    if not np.isfinite(denominator):  # only -inf logprobs: no usable mass
        return None
    p_first = float(np.exp(numerator - denominator))
    preference_display_order = 2.0 - p_first  # 1 = output shown first is better
    return 3.0 - preference_display_order if model_first else preference_display_order


def official_model_first(instruction: str, seed: int = 0) -> bool:
    """Upstream's display order for one instruction: ``True`` if the model's output is shown first.

    ``PairwiseAnnotator`` (``is_randomize_output_order=True``) switches ``output_1``/``output_2``
    when ``random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True])``
    is True, with the annotator's default ``seed=0``. Reproduces the order of the published
    annotations exactly (checked on all non-trivial rows of the shipped annotation files), so our
    judge stage can use the very same order: pass the result as ``model_first`` to
    :func:`preference_from_top_logprobs`.
    """
    import random

    return bool(
        random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[
            0
        ]
    )


def top_logprobs_from_completion(completion: Any, position: int = 0) -> list[dict[str, Any]]:
    """Extract ``top_logprobs`` of token ``position`` from an OpenAI chat completion (dict or SDK object).

    Accepts the full response (``choices[0]``), one choice (as stored in AlpacaEval's
    ``raw_completion``), or the string repr of either (AlpacaEval stores ``raw_completion`` as a
    Python-literal string in some files).
    """
    if isinstance(completion, str):
        import ast

        completion = ast.literal_eval(completion)
    if hasattr(completion, "model_dump"):
        completion = completion.model_dump()
    if isinstance(completion, Mapping) and "choices" in completion:
        completion = completion["choices"][0]
    return list(completion["logprobs"]["content"][position]["top_logprobs"])
