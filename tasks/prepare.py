"""Stage 0a, `prepare`: load a dataset (hub id, local file or bundled) into a normalised table.

Output columns: `prompt_id` (str), `prompt` (the instruction), `reference` (the reference /
SFT / baseline response). Single-turn: a chat's first user message and the assistant reply
that follows it. Rows without both are dropped and counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from artifacts.hashing import sha256_bytes, stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import PACKAGE_DIR, DatasetSpec, cache_payload
from tasks.common import TASK_DEFAULTS, StageContext, manifest, stage_logger

STAGE = "prepare"
CODE_VERSION = "1"
BUNDLED_DIR = PACKAGE_DIR / "data"
PROMPT_CANDIDATES = ("prompt", "instruction", "question")
RESPONSE_CANDIDATES = ("response", "output", "completion", "answer")
CHAT_CANDIDATES = ("messages", "chosen", "conversation")
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message names the dataset and column."""


def local_path(spec: DatasetSpec) -> Path | None:
    if spec.path.startswith("bundled:"):
        p = BUNDLED_DIR / spec.path.removeprefix("bundled:")
        if not p.is_file():
            raise DatasetError(f"bundled dataset {spec.path!r} not found (looked for {p})")
        return p
    if "://" in spec.path:
        return None
    p = Path(spec.path).expanduser()
    if p.suffix in FILE_FORMATS:
        if not p.is_file():
            raise DatasetError(f"dataset file {spec.path!r} does not exist")
        return p.resolve()
    return None


def _describe(spec: DatasetSpec) -> str:
    return f"dataset {spec.path!r} (split {spec.split!r})"


def load_raw(spec: DatasetSpec):
    """The real loading code: `datasets.load_dataset` for hub ids and for local files alike."""
    from datasets import load_dataset

    path = local_path(spec)
    if path is not None:
        if path.stat().st_size == 0:
            raise DatasetError(f"{_describe(spec)} is empty (file {path} has no rows)")
        try:
            return load_dataset(FILE_FORMATS[path.suffix], data_files={spec.split: str(path)}, split=spec.split)
        except (Exception, StopIteration) as e:  # datasets raises a bare StopIteration on whitespace-only files
            raise DatasetError(f"could not read {_describe(spec)} from {path}: {type(e).__name__}: {e}") from e
    try:
        if spec.path.startswith("hf://") and Path(spec.path).suffix in FILE_FORMATS:  # one file in a hub repo
            fmt = FILE_FORMATS[Path(spec.path).suffix]
            return load_dataset(fmt, data_files={spec.split: spec.path}, split=spec.split, revision=spec.revision)
        return load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision)
    except Exception as e:  # hub unreachable, unknown split, ...: say which dataset
        raise DatasetError(f"could not load {_describe(spec)}: {type(e).__name__}: {e}") from e


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
            raise DatasetError(f"{_describe(spec)} has no column {col!r} (set as {role}); columns: {columns}")

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
                    f"{_describe(spec)}: cannot find the prompt and response columns in {columns}; "
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


def cache_key(spec: DatasetSpec) -> str:
    path = local_path(spec)
    # A local file is part of the key by content: editing it re-runs everything downstream.
    source = {"file_sha256": sha256_bytes(path.read_bytes())} if path else {"hub": spec.path, "revision": spec.revision}
    return stage_cache_key(STAGE, code_version=CODE_VERSION, config=cache_payload(spec), inputs=source)


def run_prepare(spec: DatasetSpec, ctx: StageContext, *, role: str = "data") -> ArtifactRef:
    import pyarrow as pa

    store = ctx.open_store()
    key = cache_key(spec)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    log = stage_logger(STAGE)
    ds = load_raw(spec)
    if spec.shuffle_seed is not None:
        ds = ds.shuffle(seed=spec.shuffle_seed)
    if spec.max_rows is not None:
        ds = ds.select(range(min(spec.max_rows, len(ds))))
    if len(ds) == 0:
        raise DatasetError(f"{_describe(spec)} ({role}) is empty")
    rows, dropped = normalize_rows(ds.to_list(), list(ds.column_names), spec)
    if not rows:
        raise DatasetError(f"{_describe(spec)} ({role}): none of its {len(ds)} rows has both a prompt and a response")
    log.info("prepared %s: %d rows (%d dropped without prompt/response)", role, len(rows), dropped)
    summary = {"rows_read": len(ds), "rows_dropped": dropped}
    return store.publish_table(
        STAGE, key, pa.Table.from_pylist(rows),
        manifest=manifest(STAGE, CODE_VERSION, cache_payload(spec), {}, extra={"role": role, **summary}),
        summary=summary, produced_by=ctx.run_id,
    )


@task(name="prepare", cache_key_fn=lambda _c, p: cache_key(p["spec"]), retries=2, retry_delay_seconds=10, **TASK_DEFAULTS)
def prepare_task(spec: DatasetSpec, ctx: StageContext, role: str = "data") -> ArtifactRef:
    return run_prepare(spec, ctx, role=role)
