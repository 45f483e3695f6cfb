"""Stage 0b, `base_model`: the starting checkpoint `pi_0`.

A hub id (or a local directory) is referenced, not copied; `tiny` builds the tiny kit's model
and tokenizer locally (deterministically, from the bundled data) and stores it like any model.
"""

from __future__ import annotations

from pathlib import Path

from artifacts.hashing import code_fingerprint, sha256_bytes
from artifacts.refs import ArtifactRef
from artifacts.store import hub_model_ref
from sgpo.config import ModelSpec
from sgpo.core import Job, scratch_dir, stage, stage_main
from sgpo.models.tinykit import bundled_corpus


def tiny_sources(spec: ModelSpec) -> dict[str, str]:
    """The tiny kit's corpus and its own code are inputs: a change to how it builds the model or
    tokenizer must not be served from an old cache entry (its code by syntax tree: formatting,
    comments and docstrings do not count)."""
    if spec.name_or_path != "tiny":
        return {}
    import sgpo.models.tinykit

    sources = {p.name: sha256_bytes(p.read_bytes()) for p in bundled_corpus()}
    sources["tinykit.py"] = code_fingerprint(Path(sgpo.models.tinykit.__file__).read_text())
    return sources


@stage(
    "base_model",
    section="model",
    code_version="2",
    tracked=False,
    flows=("pipeline", "evaluation"),
    fingerprint=tiny_sources,
    description="the starting checkpoint: a hub id or local dir (referenced), or the tiny kit's model (built)",
)
def base_model(job: Job, cfg: ModelSpec) -> ArtifactRef:
    # code_version 2: tiny tokenizer trained with Qwen2's pre-tokenizer (reloads identically everywhere)
    if cfg.name_or_path != "tiny":
        return hub_model_ref(cfg.name_or_path, cfg.revision)
    from sgpo.models.tinykit import build_bundled_tiny_model

    with scratch_dir("base_model") as tmp:
        out = build_bundled_tiny_model(tmp / "model", cfg.tiny)
        return job.publish_model(out, summary={"tiny": True}, seeds={"init": cfg.tiny.seed})


if __name__ == "__main__":
    raise SystemExit(stage_main(base_model))
