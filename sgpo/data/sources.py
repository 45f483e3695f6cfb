"""Reading datasets: hub ids, hub files, URLs, local files and the bundled tiny data, one loader.

Every stage that reads a dataset (prepare, the benchmark generate stages) goes through
`load_raw` / `load_records`, i.e. `datasets.load_dataset`, the real loading code, for hub ids
and local files alike; `source_fingerprint` is what identifies a source in a cache key (a local
file by its content, a remote one by name and revision).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from artifacts.hashing import sha256_bytes
from sgpo.config import DatasetSpec
from sgpo.core.job import EMPTY_DROPPED
from sgpo.data.shared import SHARED_DATA_ENV, shared_data_dir

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message names the dataset and column.
    `retriable`: the source did not answer (network), so trying again may succeed."""

    retriable = False


def describe(spec: DatasetSpec) -> str:
    return f"dataset {spec.path!r} (split {spec.split!r})"


SHARED_PREFIX = "shared:"


def shared_file(path: str) -> Path:
    """`shared:NAME`: a file of the offline reference data folder (official benchmark files, kept
    beside the project, not in it: sgpo.data.shared); a DatasetError naming the folder when absent."""
    folder = shared_data_dir()
    p = folder / path.removeprefix(SHARED_PREFIX)
    if not p.is_file():
        why = "has no such file" if folder.is_dir() else "does not exist"
        raise DatasetError(
            f"{path!r}: the reference data folder {folder} {why} (it is ${SHARED_DATA_ENV}, else "
            "../shared/data beside the repository; set the variable to where the benchmark files are)"
        )
    return p


def resolve_data_path(path: str) -> Path:
    """A local data file as configured: `shared:NAME`, `bundled:NAME`, or a path."""
    if path.startswith(SHARED_PREFIX):
        return shared_file(path)
    if path.startswith("bundled:"):
        return BUNDLED_DIR / path.removeprefix("bundled:")
    return Path(path).expanduser().resolve()


def local_path(spec: DatasetSpec) -> Path | None:
    """The local file behind `spec` (bundled:NAME, shared:NAME or a path), None for hub ids and URLs."""
    if spec.path.startswith(SHARED_PREFIX):
        return shared_file(spec.path)
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


def source_fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    """What identifies a data source in a cache key: a local file by content, a remote one by name + revision."""
    path = local_path(spec)
    if path is not None:
        return {"file_sha256": sha256_bytes(path.read_bytes())}
    return {"hub": spec.path, "revision": spec.revision}


def _zero_row_parquet(path: Path) -> bool:
    if path.suffix != ".parquet":
        return False
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows == 0
    except Exception:  # not Parquet after all: the loader says what is wrong
        return False


def _blank(path: Path) -> bool:
    """Whether a text file holds nothing but whitespace (read in chunks: it may be large)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return False
    return True


def load_raw(spec: DatasetSpec):
    """A `datasets.Dataset` for hub ids, one file in a hub repo (hf://...), a URL to a file, or a local file."""
    from datasets import load_dataset

    path = local_path(spec)
    if path is not None:
        # datasets reports an empty file as something else: a bare StopIteration or 'Instruction
        # "train" corresponds to no data!' (whitespace only, `[]`, a CSV header alone), a
        # DatasetGenerationError and a logged error line (a Parquet file of 0 rows)
        if path.stat().st_size == 0 or _zero_row_parquet(path):
            raise DatasetError(f"{describe(spec)} is empty (file {path} has no rows)")
        try:
            return load_dataset(
                FILE_FORMATS[path.suffix], data_files={spec.split: str(path)}, split=spec.split
            )
        except (Exception, StopIteration) as e:
            if _blank(path):
                raise DatasetError(
                    f"{describe(spec)} is empty (file {path} holds only whitespace)"
                ) from None
            if "corresponds to no data" in str(e):  # `[]`, a CSV header alone: no rows
                raise DatasetError(f"{describe(spec)} is empty (file {path} has no rows)") from None
            raise DatasetError(
                f"could not read {describe(spec)} from {path}: {type(e).__name__}: {e}"
            ) from e
    suffix = PurePosixPath(spec.path.split("?")[0]).suffix
    try:
        if (
            spec.path.startswith(("hf://", "http://", "https://")) and suffix in FILE_FORMATS
        ):  # one file
            return load_dataset(
                FILE_FORMATS[suffix],
                data_files={spec.split: spec.path},
                split=spec.split,
                revision=spec.revision,
            )
        return load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision)
    except Exception as e:  # hub unreachable, unknown split, ...: say which dataset
        err = DatasetError(f"could not load {describe(spec)}: {type(e).__name__}: {e}")
        err.retriable = isinstance(e, OSError)  # requests' / httpx's connection errors are OSErrors
        raise err from e


def load_records(spec: DatasetSpec) -> list[dict[str, Any]]:
    """All rows of a source as dicts."""
    return load_raw(spec).to_list()


def conversation(row: dict[str, Any]) -> list[dict[str, str]]:
    """The prompt conversation of a prepared row: its `messages` (every turn up to the final user
    message), or the single user turn `prompt` for tables made before multi-turn support."""
    import json

    raw = row.get("messages")
    return (
        json.loads(raw)
        if isinstance(raw, str) and raw
        else [{"role": "user", "content": row["prompt"]}]
    )


def earlier_turns(row: dict[str, Any]) -> list[dict[str, str]]:
    """What comes before a prepared row's final user message: its system prompt and the dialogue so
    far ([] for a single-turn row without a system prompt)."""
    return conversation(row)[:-1]


def after_turns(turns: list[dict[str, str]], content: str) -> list[dict[str, str]]:
    """`turns`, then `content` as the final user message: a request about an answer (improve it,
    refine it, answer directly) asked inside the conversation the answer was written for, so the
    system prompt and the earlier turns reach whoever answers it."""
    return [*turns, {"role": "user", "content": content}]


def is_empty_answer(text: Any) -> bool:
    """No answer: None, empty or whitespace only. A model generates these when it is broken (e.g. a
    learning rate too high for a pretrained model) or when it ends at once; they teach nothing as an
    answer to improve, a chosen or a rejected one."""
    return not isinstance(text, str) or not text.strip()


class EmptyAnswersError(RuntimeError):
    """Too many generated answers were empty to publish: the model is broken; retrying the stage
    would generate the same answers."""

    retriable = False


def check_empty_answers(stage: str, empty: int, total: int, max_fraction: float, key: str) -> None:
    """EmptyAnswersError when more than `max_fraction` of `total` generated answers were empty (or all)."""
    if total and (empty == total or empty > max_fraction * total):
        raise EmptyAnswersError(
            f"{stage}: {empty} of {total} generated answers were empty or whitespace (more than "
            f"{key}={max_fraction:g}), so nothing was published. The model answers nothing: check the "
            "learning rate of the stage that trained it (a pretrained model wants about 1e-5 to 5e-5 for "
            f"SFT; 1e-3 wrecks one in a step); to publish what is left set {key}=1"
        )


def check_empty_reused(stage: str, ref: Any, kept_key: str, max_fraction: float) -> None:
    """EmptyAnswersError when a stored artifact, published under a looser `STAGE.max_empty_fraction`
    (a runtime setting, not in the cache key), has more empty answers than this config accepts: it
    is not reused. Its summary holds the answers kept (`kept_key`) and those dropped as empty."""
    summary = ref.summary or {}
    empty, kept = summary.get(EMPTY_DROPPED), summary.get(kept_key)
    if not (isinstance(empty, int) and isinstance(kept, int)) or not empty + kept:
        return
    total, key = empty + kept, f"{stage}.max_empty_fraction"
    if empty == total or empty > max_fraction * total:
        raise EmptyAnswersError(
            f"{stage}: the stored artifact {ref.uri} dropped {empty} of {total} generated answers as "
            f"empty, more than {key}={max_fraction:g}, so it is not reused; raise {key} to accept it"
        )
