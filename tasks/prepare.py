"""Stage 0a, `prepare`: load a dataset (hub id, local file or bundled) into a normalised table.

Output columns: `prompt_id` (str), `prompt` (the final user message), `messages` (JSON: the
conversation up to and including that user message, [{role, content}]), `reference` (the final
assistant answer: the SFT / reference / baseline response). With `preference_pairs`, also
`chosen` and `rejected` (the two final answers; `reference` = chosen).

Chats keep every turn: the prompt of a multi-turn row is the dialogue up to its final user turn,
its reference the assistant answer that follows (TRL's convention for prompt/completion and
preference data). `turns: all` makes one row per assistant turn, so SFT learns every answer of
a dialogue (the SGPO paper trains on whole UltraChat dialogues); `turns: last` keeps one row per
chat (the final answer). Rows without a usable prompt and answer are dropped and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from artifacts.refs import ArtifactRef
from sgpo.config import DatasetSpec
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import DatasetError, describe, load_raw, source_fingerprint

PROMPT_CANDIDATES = ("prompt", "instruction", "question")
RESPONSE_CANDIDATES = ("response", "output", "completion", "answer")
CHAT_CANDIDATES = ("messages", "chosen", "conversation")


def _messages(chat: Any) -> list[dict[str, str]] | None:
    """A chat as [{role, content}] with string contents, or None if it is not one."""
    if not isinstance(chat, list) or not chat:
        return None
    out = []
    for msg in chat:
        if (
            not isinstance(msg, dict)
            or not isinstance(msg.get("content"), str)
            or msg.get("role") not in ("system", "user", "assistant")
        ):
            return None
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def chat_examples(chat: Any, turns: str) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt conversation ending with a user turn, the assistant answer after it) for the final
    assistant turn ('last') or for every assistant turn ('all')."""
    msgs = _messages(chat)
    if msgs is None:
        return []
    ends = [
        j
        for j, m in enumerate(msgs)
        if m["role"] == "assistant" and j > 0 and msgs[j - 1]["role"] == "user"
    ]
    if turns == "last":
        ends = (
            ends[-1:]
            if ends and ends[-1] == max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
            else []
        )
    return [(msgs[:j], msgs[j]["content"]) for j in ends]


def _row(pid: str, prompt_msgs: list[dict[str, str]], answer: str) -> dict[str, str] | None:
    prompt = (
        prompt_msgs[-1]["content"] if prompt_msgs and prompt_msgs[-1]["role"] == "user" else None
    )
    if not (
        isinstance(prompt, str) and prompt.strip() and isinstance(answer, str) and answer.strip()
    ):
        return None
    return {
        "prompt_id": pid,
        "prompt": prompt.strip(),
        "messages": json.dumps(prompt_msgs, ensure_ascii=False),
        "reference": answer.strip(),
    }


def _preference_rows(
    rows: list[dict[str, Any]], columns: list[str], spec: DatasetSpec, need: Any
) -> tuple[list[dict[str, str]], int]:
    need(spec.chosen_column, "chosen_column")
    need(spec.rejected_column, "rejected_column")
    prompt_col = spec.prompt_column or next((c for c in PROMPT_CANDIDATES if c in columns), None)
    out, dropped = [], 0
    for i, row in enumerate(rows):
        chosen, rejected = row.get(spec.chosen_column), row.get(spec.rejected_column)
        if isinstance(chosen, list) and isinstance(rejected, list):
            c, r = chat_examples(chosen, "last"), chat_examples(rejected, "last")
            # both answers must follow the same conversation, or the pair compares two different prompts
            if not c or not r or c[0][0] != r[0][0]:
                dropped += 1
                continue
            (prompt_msgs, chosen_text), (_, rejected_text) = c[0], r[0]
        elif (
            isinstance(chosen, str)
            and isinstance(rejected, str)
            and prompt_col
            and isinstance(row.get(prompt_col), str)
        ):
            prompt_msgs, chosen_text, rejected_text = (
                [{"role": "user", "content": row[prompt_col]}],
                chosen,
                rejected,
            )
        else:
            dropped += 1
            continue
        base = _row(str(row.get("prompt_id") or row.get("id") or i), prompt_msgs, chosen_text)
        if base is None or not isinstance(rejected_text, str) or not rejected_text.strip():
            dropped += 1
            continue
        out.append({**base, "chosen": chosen_text.strip(), "rejected": rejected_text.strip()})
    return out, dropped


def _columns_read(
    columns: list[str], spec: DatasetSpec
) -> tuple[str | None, str | None, str | None]:
    """(chat column, prompt column, response column) a plain (not preference) dataset is read from."""
    chat_col = spec.messages_column
    prompt_col, resp_col = spec.prompt_column, spec.response_column
    if not (chat_col or (prompt_col and resp_col)):
        if not resp_col:
            chat_col = chat_col or next((c for c in CHAT_CANDIDATES if c in columns), None)
        if chat_col is None:
            prompt_col = prompt_col or next((c for c in PROMPT_CANDIDATES if c in columns), None)
            resp_col = resp_col or next((c for c in RESPONSE_CANDIDATES if c in columns), None)
            if prompt_col is None or resp_col is None:
                raise DatasetError(
                    f"{describe(spec)}: cannot find the prompt and response columns in {columns}; "
                    f"expected a chat column {CHAT_CANDIDATES}, or a prompt column {PROMPT_CANDIDATES} with a "
                    f"response column {RESPONSE_CANDIDATES}; set data.<name>.prompt_column / response_column / messages_column"
                )
    return chat_col, prompt_col, resp_col


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "text" if value.strip() else "empty text"
    return type(value).__name__


def unusable_columns(rows: list[dict[str, Any]], columns: list[str], spec: DatasetSpec) -> str:
    """Why no row could be used, naming each column read that holds no usable value and what it
    holds instead ("column 'prompt' holds int (20 of 20 rows), where text is needed"); '' when every
    column read has usable values (then the rows pair them badly)."""
    if spec.preference_pairs:
        prompt = spec.prompt_column or next((c for c in PROMPT_CANDIDATES if c in columns), None)
        read = {spec.chosen_column: "text or chat", spec.rejected_column: "text or chat"}
        read.update({prompt: "text"} if prompt else {})
    else:
        chat_col, prompt_col, resp_col = _columns_read(columns, spec)
        read = {
            c: kind
            for c, kind in ((chat_col, "chat"), (prompt_col, "text"), (resp_col, "text"))
            if c
        }
    problems = []
    for col, wanted in read.items():
        values = [row.get(col) for row in rows]
        usable = [
            v
            for v in values
            if (isinstance(v, str) and v.strip() and "text" in wanted)
            or ("chat" in wanted and _messages(v) is not None)
        ]
        if values and not usable:
            kinds = Counter(_kind_of(v) for v in values).most_common()
            held = ", ".join(f"{k} ({n} of {len(values)} rows)" for k, n in kinds)
            problems.append(f"column {col!r} holds {held}, where {wanted} is needed")
    return "; ".join(problems)


def normalize_rows(
    rows: list[dict[str, Any]], columns: list[str], spec: DatasetSpec
) -> tuple[list[dict[str, str]], int]:
    """(normalised rows, number dropped). Raises DatasetError for a wrong or missing column."""

    def need(col: str | None, role: str) -> None:
        if col is not None and col not in columns:
            raise DatasetError(
                f"{describe(spec)} has no column {col!r} (set as {role}); columns: {columns}"
            )

    need(spec.messages_column, "messages_column")
    need(spec.prompt_column, "prompt_column")
    need(spec.response_column, "response_column")
    if spec.preference_pairs:
        return _preference_rows(rows, columns, spec, need)
    chat_col, prompt_col, resp_col = _columns_read(columns, spec)
    out, dropped = [], 0
    for i, row in enumerate(rows):
        pid = str(row.get("prompt_id") or row.get("id") or i)
        if chat_col:
            examples = chat_examples(row.get(chat_col), spec.turns)
            if (
                prompt_col and examples
            ):  # an explicit prompt column wins over the chat's final user turn
                msgs, answer = examples[-1]
                examples = (
                    [(msgs[:-1] + [{"role": "user", "content": row.get(prompt_col)}], answer)]
                    if isinstance(row.get(prompt_col), str)
                    else []
                )
        else:
            examples = (
                [([{"role": "user", "content": row.get(prompt_col)}], row.get(resp_col))]
                if isinstance(row.get(prompt_col), str)
                else []
            )
        made = [
            r
            for k, (msgs, answer) in enumerate(examples)
            if (r := _row(pid if len(examples) == 1 else f"{pid}/{k}", msgs, answer)) is not None
        ]
        if not made:
            dropped += 1
        out.extend(made)
    return out, dropped


@stage(
    "prepare",
    section="data.<role>",
    code_version="2",
    tracked=False,
    retries=2,
    retry_delay_s=10,
    fingerprint=source_fingerprint,  # a local file by content: editing it re-runs everything downstream
    description="load a dataset (hub id, local file or bundled) into prompt_id / prompt / reference rows",
)
def prepare(job: Job, cfg: DatasetSpec) -> ArtifactRef:
    import pyarrow as pa

    ds = load_raw(cfg)
    if cfg.shuffle_seed is not None:
        ds = ds.shuffle(seed=cfg.shuffle_seed)
    if cfg.max_rows is not None:
        ds = ds.select(range(min(cfg.max_rows, len(ds))))
    if len(ds) == 0:
        raise DatasetError(f"{describe(cfg)} is empty")
    raw = ds.to_list()
    rows, dropped = normalize_rows(raw, list(ds.column_names), cfg)
    if not rows:
        why = unusable_columns(raw, list(ds.column_names), cfg)
        raise DatasetError(
            f"{describe(cfg)}: none of its {len(ds)} rows has both a prompt and a response"
            + (f": {why}" if why else "")
        )
    if dropped:  # a warning: shown on the run's console and in its logs (a smaller eval set)
        job.log.warning(
            "prepare: %s: %d of %d rows dropped (no prompt, or an empty response / reference)",
            describe(cfg),
            dropped,
            len(ds),
        )
    job.log.info(
        "prepared %s: %d rows (%d dropped without prompt/response)", cfg.path, len(rows), dropped
    )
    summary = {"rows_read": len(ds), "rows_dropped": dropped}
    return job.publish_table(pa.Table.from_pylist(rows), summary=summary, extra=summary)


if __name__ == "__main__":
    raise SystemExit(stage_main(prepare))
