"""Stage 0b, `base_model`: the starting checkpoint `pi_0`.

A hub id (or a local directory) is referenced, not copied; `tiny` builds the tiny kit's model
and tokenizer locally (deterministically, from the bundled data) and stores it like any model.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task

from artifacts.hashing import sha256_bytes, stage_cache_key
from artifacts.refs import ArtifactRef
from artifacts.store import hub_model_ref
from sgpo.config import ModelSpec, cache_payload
from tasks.common import TASK_DEFAULTS, StageContext, manifest, scratch_dir
from tasks.prepare import BUNDLED_DIR

STAGE = "base_model"
CODE_VERSION = "2"  # 2: tiny tokenizer trained with Qwen2's pre-tokenizer (reloads identically everywhere)
TINY_CORPUS_GLOB = "tiny/*.jsonl"


def _tiny_corpus() -> list:
    return sorted(BUNDLED_DIR.glob(TINY_CORPUS_GLOB))


def cache_key(spec: ModelSpec) -> str:
    corpus: dict[str, str] = {}
    if spec.name_or_path == "tiny":
        import sgpo.tinykit

        # The kit's own source is an input too: a change to how it builds the model or tokenizer
        # must not be served from an old cache entry.
        corpus = {p.name: sha256_bytes(p.read_bytes()) for p in _tiny_corpus()}
        corpus["tinykit.py"] = sha256_bytes(Path(sgpo.tinykit.__file__).read_bytes())
    return stage_cache_key(STAGE, code_version=CODE_VERSION, config=cache_payload(spec), inputs=corpus)


def run_base_model(spec: ModelSpec, ctx: StageContext) -> ArtifactRef:
    if spec.name_or_path != "tiny":
        return hub_model_ref(spec.name_or_path, spec.revision)
    store = ctx.open_store()
    key = cache_key(spec)
    if (ref := ctx.reuse(store, STAGE, key)) is not None:
        return ref
    from sgpo.tinykit import build_tiny_model, corpus_texts

    with scratch_dir(STAGE) as tmp:
        out = build_tiny_model(tmp / "model", spec.tiny, corpus_texts(_tiny_corpus()))
        return store.publish_model(
            STAGE, key, out,
            manifest=manifest(STAGE, CODE_VERSION, cache_payload(spec), {}, seeds={"init": spec.tiny.seed}),
            summary={"tiny": True}, produced_by=ctx.run_id,
        )


@task(name="base_model", cache_key_fn=lambda _c, p: cache_key(p["spec"]), **TASK_DEFAULTS)
def base_model_task(spec: ModelSpec, ctx: StageContext) -> ArtifactRef:
    return run_base_model(spec, ctx)
