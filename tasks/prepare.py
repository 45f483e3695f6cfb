"""Stage 0a, `prepare`: load a dataset (hub id, local file or bundled) into a normalised table.

Output columns: `prompt_id` (str), `prompt` (the instruction), `reference` (the reference /
SFT / baseline response). Single-turn: a chat's first user message and the assistant reply
that follows it. Rows without both are dropped and counted.
"""
from __future__ import annotations

from typing import Any

from artifacts.refs import ArtifactRef
from sgpo.config import DatasetSpec
from sgpo.data_sources import DatasetError, describe, load_raw, source_fingerprint
from sgpo.stage import Job, stage, stage_main

PROMPT_CANDIDATES = ("prompt", "instruction", "question")
RESPONSE_CANDIDATES = ("response", "output", "completion", "answer")
CHAT_CANDIDATES = ("messages", "chosen", "conversation")


def _first_turn(chat: Any) -> tuple[str | None, str | None]:
    if not isinstance(chat, list):
        return None, None
    prompt = None
    for msg in chat:
        if not isinstance(msg, dict):
            return None, None
        if msg.get("role") == "user" and prompt is None:
            prompt = msg.get("content")
        elif msg.get("role") == "assistant" and prompt is not None:
            return prompt, msg.get("content")
    return prompt, None


def normalize_rows(rows: list[dict[str, Any]], columns: list[str], spec: DatasetSpec) -> tuple[list[dict[str, str]], int]:
    """(normalised rows, number dropped). Raises DatasetError for a wrong or missing column."""

    def need(col: str | None, role: str) -> None:
        if col is not None and col not in columns:
            raise DatasetError(f"{describe(spec)} has no column {col!r} (set as {role}); columns: {columns}")

    need(spec.messages_column, "messages_column")
    need(spec.prompt_column, "prompt_column")
    need(spec.response_column, "response_column")
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
    out, dropped = [], 0
    for i, row in enumerate(rows):
        if chat_col:
            prompt, response = _first_turn(row.get(chat_col))
            if prompt_col:  # an explicit prompt column wins over the chat's first user turn
                prompt = row.get(prompt_col)
        else:
            prompt, response = row.get(prompt_col), row.get(resp_col)
        if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.strip() or not response.strip():
            dropped += 1
            continue
        pid = row.get("prompt_id") or row.get("id") or f"{i}"
        out.append({"prompt_id": str(pid), "prompt": prompt.strip(), "reference": response.strip()})
    return out, dropped


@stage("prepare", section="data.<role>", tracked=False, retries=2, retry_delay_s=10,
       fingerprint=source_fingerprint,  # a local file by content: editing it re-runs everything downstream
       description="load a dataset (hub id, local file or bundled) into prompt_id / prompt / reference rows")
def prepare(job: Job, cfg: DatasetSpec) -> ArtifactRef:
    import pyarrow as pa

    ds = load_raw(cfg)
    if cfg.shuffle_seed is not None:
        ds = ds.shuffle(seed=cfg.shuffle_seed)
    if cfg.max_rows is not None:
        ds = ds.select(range(min(cfg.max_rows, len(ds))))
    if len(ds) == 0:
        raise DatasetError(f"{describe(cfg)} is empty")
    rows, dropped = normalize_rows(ds.to_list(), list(ds.column_names), cfg)
    if not rows:
        raise DatasetError(f"{describe(cfg)}: none of its {len(ds)} rows has both a prompt and a response")
    job.log.info("prepared %s: %d rows (%d dropped without prompt/response)", cfg.path, len(rows), dropped)
    summary = {"rows_read": len(ds), "rows_dropped": dropped}
    return job.publish_table(pa.Table.from_pylist(rows), summary=summary, extra=summary)


if __name__ == "__main__":
    raise SystemExit(stage_main(prepare))
