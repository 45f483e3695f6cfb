"""Content hashes and cache keys.

A stage's cache key is `sha256(stage, code version, its config without runtime fields, its
prompt versions, the content hashes of its inputs)`. No run id goes in, so a new run of the
same config (UI, schedule or CLI) reuses every finished stage, and a change in one stage's
config changes its key and, through its output's content hash, the keys downstream.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_PREFIX_LEN = 16  # folder names use a prefix; manifests keep the full hash


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage_cache_key(
    stage: str,
    *,
    code_version: str,
    config: dict[str, Any],
    inputs: dict[str, str],
    prompts: dict[str, str] | None = None,
) -> str:
    """`inputs` maps input names to content hashes, `prompts` names to prompt versions."""
    payload = {
        "stage": stage,
        "code_version": code_version,
        "config": config,
        "inputs": inputs,
        "prompts": prompts or {},
    }
    return sha256_text(canonical_json(payload))
