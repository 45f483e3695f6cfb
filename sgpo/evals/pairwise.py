"""The one pairwise judge: AlpacaEval 2.0's protocol, used by every stage that compares two answers.

The pipeline's `judge` stage, the `alpaca_eval_judge` stage and the `pairwise` stage all call
`judge_pairs`, so the pipeline's win rate on the AlpacaEval file is the AlpacaEval number.

Protocol (the official `weighted_alpaca_eval_gpt4_turbo` annotator of tatsu-lab/alpaca_eval):

* Prompt: `sgpo/prompts/alpaca_eval_clf_v1.txt` (official `alpaca_eval_clf.txt`, verbatim) by
  default, filled like upstream `utils.make_prompts` (each placeholder replaced once, in order)
  and split into system + user messages like `utils.prompt_to_chatml`. A custom prompt file is
  selectable by config (`prompt`); a template without chatml markers is sent as one user turn.
* Order: upstream's per-instruction random order `random.Random("is_switched_outputs" +
  instruction + "0")` (`sgpo.evals.alpaca_eval.preference.official_model_first`).
* Answer: one token (max_tokens 1, temperature 1, top-5 logprobs); the preference is read from
  the top logprobs of "m" (shown first) and "M" (shown second) and mapped back to the canonical
  order (output_1 = baseline, output_2 = model; 1 = baseline better, 2 = model better).
  Identical outputs get 1.5 without a call. A row whose top logprobs hold neither token has no
  preference (upstream: NaN, dropped from the win rate). An endpoint that returns no logprobs at
  all loses the weighting: its text label "m" / "M" is used as a 1 / 2 preference
  (`judge_status` "text_label", counted in the summary), anything else is "no_logprobs".
* What the judge could not read is reported (`label_report`: the unlabelled share, by reason, in
  the summary and the stage line), and above `max_unlabelled_fraction` (default 10%) the stage
  fails, also when an artifact made under a looser threshold would be reused (`check_reused`).
* Journal: one per judge setting, shared by every stage (`journal_url`), with requests keyed by
  the pair's content, so the same pair judged twice (by two stages, two runs, or two row
  selections) is paid once.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from artifacts.hashing import sha256_text, stage_cache_key
from sgpo.config import PairJudgeConfig
from sgpo.llm.client import CallRecord, CallSummary, ChatRequest, EndpointConfig
from sgpo.prompts import load_prompt

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
JOURNAL_STAGE = "_journal/pair_judge"  # one journal for all stages: same pair, same call
CODE_VERSION = "1"


def render_judge_prompt(template: str, **values: str) -> str:
    """Upstream `utils.make_prompts` for batch_size 1: each `{key}` placeholder found in the template
    (regex ``{([^ \\s]+?)}``, in order of first appearance) is replaced once by its value.
    Braces in the values, and the template's literal JSON-like braces, are left as they are."""
    keys = list(Counter(re.findall(r"{([^ \s]+?)}", template)))
    missing = [k for k in keys if k not in values]
    if missing:
        raise KeyError(f"judge prompt needs values for {missing}")
    out = template
    for k in keys:
        out = out.replace("{" + k + "}", str(values[k]), 1)
    return out


def prompt_to_chatml(
    prompt: str, start_token: str = "<|im_start|>", end_token: str = "<|im_end|>"
) -> list[dict[str, str]]:
    """Upstream `utils.prompt_to_chatml`: `<|im_start|>ROLE\\nCONTENT<|im_end|>` blocks -> chat messages
    (content stripped). Only plain roles are supported (upstream's `system name=...` is not used by
    the AlpacaEval 2.0 prompt)."""
    prompt = prompt.strip()
    if not (prompt.startswith(start_token) and prompt.endswith(end_token)):
        raise ValueError("a chatml prompt must start with <|im_start|> and end with <|im_end|>")
    messages = []
    for part in prompt.split(start_token)[1:]:
        role, _, rest = part.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split(end_token, 1)[0].strip()})
    return messages


def judge_messages(template: str, **values: str) -> list[dict[str, str]]:
    text = render_judge_prompt(template, **values)
    if text.strip().startswith("<|im_start|>"):
        return prompt_to_chatml(text)
    return [{"role": "user", "content": text.strip()}]


@dataclass(frozen=True)
class PairJudge:
    """Which endpoint, prompt and one-token sampling judge a pair."""

    endpoint: EndpointConfig
    prompt: str
    top_logprobs: int
    temperature: float
    order_seed: int
    journal_namespace: str = (
        ""  # set: a journal of its own, so every pair is asked again (fresh verdicts)
    )

    @classmethod
    def from_config(cls, cfg: PairJudgeConfig) -> PairJudge:
        return cls(
            endpoint=cfg.endpoint,
            prompt=cfg.prompt,
            top_logprobs=cfg.top_logprobs,
            temperature=cfg.judge_temperature,
            order_seed=cfg.order_seed,
            journal_namespace=getattr(cfg, "journal_namespace", ""),
        )

    @property
    def prompt_version(self) -> str:
        return load_prompt(self.prompt).version

    def payload(self) -> dict[str, Any]:
        """Everything that determines the judge's answers (its journal key)."""
        return {
            "model": self.endpoint.model,
            "max_invalid_retries": self.endpoint.max_invalid_retries,
            "prompt": self.prompt_version,
            "top_logprobs": self.top_logprobs,
            "temperature": self.temperature,
            "top_p": 1.0,
            "max_tokens": 1,
            "order_seed": self.order_seed,
            **({"journal_namespace": self.journal_namespace} if self.journal_namespace else {}),
        }

    def journal_url(self, store: Any) -> str:
        calls_key = stage_cache_key(
            "pair_judge/calls", code_version=CODE_VERSION, config=self.payload(), inputs={}
        )
        return store.work_url(JOURNAL_STAGE, calls_key) + "/calls"

    @property
    def namespace(self) -> str:
        return f"pair_judge:{CODE_VERSION}:{self.prompt_version}" + (
            f":{self.journal_namespace}" if self.journal_namespace else ""
        )

    def request(self, instruction: str, baseline: str, model: str) -> tuple[ChatRequest, bool]:
        """The judge request for one pair, and whether the model's output is shown first."""
        from sgpo.evals.alpaca_eval.preference import official_model_first

        model_first = official_model_first(instruction, self.order_seed)
        shown_1, shown_2 = (model, baseline) if model_first else (baseline, model)
        messages = judge_messages(
            load_prompt(self.prompt).text,
            instruction=instruction,
            output_1=shown_1,
            output_2=shown_2,
        )
        # The row key is the pair's content: the same pair in another selection of rows is the same call.
        key = sha256_text(json.dumps([instruction, shown_1, shown_2]))[:24]
        req = ChatRequest(
            key=key,
            messages=messages,
            temperature=self.temperature,
            top_p=1.0,
            max_tokens=1,
            seed=None,
            top_logprobs=self.top_logprobs,
        )
        return req, model_first


def raw_completion(record: CallRecord) -> str | None:
    """The judge's choice as upstream stores it in `raw_completion` (the OpenAI choice + text + total_tokens), JSON."""
    if not record.raw_response:
        return None
    try:
        body = json.loads(record.raw_response)
    except ValueError:
        return record.raw_response
    if not isinstance(body, dict) or not body.get("choices"):
        return json.dumps(body)
    choice = dict(body["choices"][0])
    choice["text"] = (choice.get("message") or {}).get("content")
    choice["total_tokens"] = (body.get("usage") or {}).get("total_tokens")
    return json.dumps(choice, ensure_ascii=False)


def judge_pairs(
    pairs: list[tuple[str, str, str]],
    judge: PairJudge,
    *,
    store: Any,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], CallSummary | None]:
    """Judge `(instruction, baseline, model)` pairs; one dict per pair with `preference` (1 = baseline
    better, 2 = model better, None = no label), `is_switched_outputs` (model shown first),
    `raw_completion`, `judge_status` and `price_per_example`."""
    from sgpo.evals.alpaca_eval.preference import preference_from_top_logprobs
    from sgpo.llm.client import call_all

    out: list[dict[str, Any] | None] = [None] * len(pairs)
    reqs, where, orders = [], [], []
    for i, (instruction, baseline, model) in enumerate(pairs):
        req, model_first = judge.request(instruction, baseline, model)
        if baseline == model:  # upstream: identical outputs are a draw, not sent to the judge
            out[i] = {
                "preference": 1.5,
                "is_switched_outputs": model_first,
                "raw_completion": None,
                "judge_status": "identical_outputs",
                "price_per_example": 0.0,
            }
            continue
        reqs.append(req)
        where.append(i)
        orders.append(model_first)
    summary = None
    if reqs:
        summary = call_all(
            reqs,
            judge.endpoint,
            journal_url=judge.journal_url(store),
            namespace=judge.namespace,
            storage_options=store.storage_options,
            allow_truncated=True,  # max_tokens=1 by design
            progress=progress,
        )
        ep = judge.endpoint
        for i, model_first, rec in zip(where, orders, summary.records):
            top = (
                rec.top_logprobs[0]["top_logprobs"]
                if rec.status == "ok" and rec.top_logprobs
                else []
            )
            pref = preference_from_top_logprobs(top, model_first=model_first) if top else None
            label_status = None
            if rec.status == "ok" and not rec.top_logprobs:
                # no logprobs at all: the text label without its weight, or nothing to read
                pref, label_status = text_preference(rec.text, model_first=model_first)
            price = None
            if (
                ep.price_per_1m_prompt_tokens is not None
                and ep.price_per_1m_completion_tokens is not None
            ):
                price = (
                    rec.prompt_tokens * ep.price_per_1m_prompt_tokens
                    + rec.completion_tokens * ep.price_per_1m_completion_tokens
                ) / 1e6
            status = label_status or (
                "ok"
                if rec.status == "ok" and pref is not None
                else (rec.reason or "no_label_token")
            )
            out[i] = {
                "preference": pref,
                "is_switched_outputs": model_first,
                "raw_completion": raw_completion(rec),
                "judge_status": status,
                "price_per_example": price,
            }
    return [o for o in out if o is not None], summary


def text_preference(text: str | None, *, model_first: bool) -> tuple[float | None, str]:
    """(preference, judge_status) from an answer without logprobs: "m" (the output shown first is
    better) or "M" give 1 or 2, unweighted ("text_label"); anything else none ("no_logprobs")."""
    label = (text or "").strip()
    if label not in ("m", "M"):
        return None, "no_logprobs"
    model_better = (label == "m") == model_first
    return (2.0 if model_better else 1.0), "text_label"


def label_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the judge could read, for the summary and the stage line: rows sent to the judge
    (identical outputs are not), those without a label (share and reasons), those labelled only by
    their text (no logprobs: a 1 / 2 preference without the weighting)."""
    asked = [r for r in results if r["judge_status"] != "identical_outputs"]
    unlabelled = [r for r in asked if r["preference"] is None]
    return {
        "n_asked": len(asked),
        "n_unlabelled": len(unlabelled),
        "unlabelled_fraction": round(len(unlabelled) / len(asked), 4) if asked else 0.0,
        "unlabelled_reasons": dict(Counter(r["judge_status"] for r in unlabelled)),
        "n_text_labelled": sum(r["judge_status"] == "text_label" for r in asked),
    }


def label_note(summary: dict[str, Any]) -> str:
    """' (3 of 16 without a label: 19%; 2 labelled by text only, unweighted)', or '' when all were read."""
    parts = []
    if summary.get("n_unlabelled"):
        parts.append(
            f"{summary['n_unlabelled']} of {summary.get('n_asked', summary.get('n'))} without a "
            f"label: {100 * summary.get('unlabelled_fraction', 0):.0f}%"
        )
    if summary.get("n_text_labelled"):
        parts.append(
            f"{summary['n_text_labelled']} labelled by their text only (no logprobs: "
            "unweighted 1/2 preferences)"
        )
    return f" ({'; '.join(parts)})" if parts else ""


def annotation_schema(extra: tuple[tuple[str, Any], ...] = ()):
    """Parquet schema of AlpacaEval-format annotations: the official columns first, then ours."""
    import pyarrow as pa

    return pa.schema(
        [
            ("instruction", pa.string()),
            ("output_1", pa.string()),
            ("generator_1", pa.string()),
            ("dataset", pa.string()),
            ("output_2", pa.string()),
            ("generator_2", pa.string()),
            ("annotator", pa.string()),
            ("preference", pa.float64()),
            ("price_per_example", pa.float64()),
            ("raw_completion", pa.string()),
            ("index", pa.int64()),
            ("is_switched_outputs", pa.bool_()),
            ("judge_model", pa.string()),
            ("judge_status", pa.string()),
            *extra,
        ]
    )


def annotation_rows(
    rows: list[dict[str, Any]], results: list[dict[str, Any]], judge: PairJudge
) -> list[dict[str, Any]]:
    """AlpacaEval-format annotation rows from (instruction, output_1/baseline, output_2/model, ...) rows
    and `judge_pairs` results; extra keys of `rows` (e.g. `index`, `dataset`) are kept."""
    return [
        {
            **r,
            "annotator": ANNOTATOR
            if judge.prompt == "alpaca_eval_clf_v1"
            else f"custom:{judge.prompt_version}",
            "preference": res["preference"],
            "price_per_example": res["price_per_example"],
            "raw_completion": res["raw_completion"],
            "is_switched_outputs": res["is_switched_outputs"],
            "judge_model": judge.endpoint.model,
            "judge_status": res["judge_status"],
        }
        for r, res in zip(rows, results)
    ]


def call_totals(summary: CallSummary | None) -> dict[str, Any]:
    if summary is None:
        return {
            "judge_calls": 0,
            "from_journal": 0,
            "sent": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": None,
            "invalid_reasons": {},
        }
    return {
        "judge_calls": len(summary.records),
        "from_journal": summary.n_from_journal,
        "sent": summary.n_sent,
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "cost_usd": summary.cost_usd,
        "invalid_reasons": dict(summary.invalid_reasons),
    }


class JudgeOutputError(RuntimeError):
    """Too many judge answers without a label: the stage fails and publishes nothing (no manifest).

    Retrying cannot help (the same requests get the same answers from the journal), so it is not
    retriable; the paid answers stay in the journal, and a rerun pays nothing for them again."""

    retriable = False


def check_labelled(
    what: str,
    section: str,
    n_labelled: int,
    n: int,
    max_unlabelled_fraction: float,
    *,
    label: str = "a label ('m' or 'M' among the top logprobs)",
    fix: str | None = None,
    prompt_field: str = "prompt",
    cause: str | None = None,
) -> None:
    """Raise JudgeOutputError when more than `max_unlabelled_fraction` of `n` judge answers has no label.

    The threshold, not "any label at all": a judge that follows the format labels almost every row,
    so a large unlabelled share means a wrong endpoint, model or prompt, and a win rate over the
    few labelled rows would be biased (the rows a confused judge labels are not a random sample).
    The default 0.1 fails a run where more than one answer in ten could not be read; 1 never fails.
    No answers at all (e.g. all outputs identical, decided without a call) is not a failure.
    `cause`: why the answers had no label, when known (e.g. the endpoint returned no logprobs)."""
    if n <= 0 or (n - n_labelled) / n <= max_unlabelled_fraction:
        return
    cause = cause or (
        f"The judge did not follow the answer format: check {section}.endpoint (base_url, model) and "
        f"{section}.{prompt_field}"
    )
    raise JudgeOutputError(
        f"{what}: {n_labelled} of {n} judge answers had {label}; more than {section}.max_unlabelled_fraction="
        f"{max_unlabelled_fraction:g} are unlabelled, so nothing was published. {cause}. The paid answers stay "
        f"in the journal (a rerun pays nothing for them again); "
        + (fix or f"to re-ask after fixing the endpoint set {section}.journal_namespace=NEW")
        + f", to accept them raise {section}.max_unlabelled_fraction"
    )


def check_judged(
    what: str, section: str, results: list[dict[str, Any]], max_unlabelled_fraction: float
) -> None:
    """`check_labelled` over `judge_pairs` results: the rows sent to the judge (identical outputs are not)."""
    check_label_report(what, section, label_report(results), max_unlabelled_fraction)


def check_label_report(
    what: str, section: str, report: dict[str, Any], max_unlabelled_fraction: float
) -> None:
    """`check_labelled` over a `label_report` (also a reused artifact's summary: `check_reused`)."""
    reasons = report.get("unlabelled_reasons") or {}
    no_logprobs = reasons.get("no_logprobs", 0)
    cause = None
    if no_logprobs and no_logprobs >= sum(reasons.values()) / 2:
        cause = (
            f"The endpoint returned no logprobs for {no_logprobs} answers (and no 'm'/'M' text to fall "
            f"back on): {section}.endpoint must return top_logprobs (AlpacaEval's weighted judge reads "
            "the preference from them); check that the server or model supports logprobs"
        )
    check_labelled(
        what,
        section,
        report["n_asked"] - report["n_unlabelled"],
        report["n_asked"],
        max_unlabelled_fraction,
        cause=cause,
    )


def check_reused(what: str, section: str, summary: dict[str, Any], threshold: float) -> None:
    """A finished judge artifact is reused only if it passes the threshold the config asks for now
    (made under a looser one, it would be a result this config refuses)."""
    if "n_asked" in summary:
        check_label_report(what, section, summary, threshold)
    elif isinstance(summary.get("n"), int) and isinstance(summary.get("n_labelled"), int):
        check_labelled(what, section, summary["n_labelled"], summary["n"], threshold)
