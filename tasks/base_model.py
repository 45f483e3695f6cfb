"""Stage 0b, `base_model`: the starting checkpoint `pi_0`, from `model.name_or_path`
(sgpo.models.source):

* a hub id is referenced by name and revision, a local checkpoint folder where it is (file://,
  by its content hash): neither is copied;
* a GGUF file or a packaged model (`packaged:SmolLM2-135M-Instruct`) is converted once into a
  safetensors checkpoint + tokenizer + chat template and stored (sgpo.models.gguf);
* `tiny` builds the tiny kit's model and tokenizer (deterministically, from the bundled data).

With `model.chat_template` the model is stored whatever its source, its tokenizer carrying that
template (a raw base that training starts from directly needs one), so every stage after it
(training, sampling, judging) formats chats the same way.

A source that cannot work fails in the key's fingerprint, before the store is touched.
"""

from __future__ import annotations

from pathlib import Path

from artifacts.hashing import code_fingerprint, sha256_bytes
from artifacts.refs import ArtifactRef
from sgpo.config import ModelSpec
from sgpo.core import Job, scratch_dir, stage, stage_main
from sgpo.models.source import (
    describe,
    referenced_model,
    resolve_model_source,
    source_fingerprint,
)
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


def model_sources(spec: ModelSpec) -> dict[str, str]:
    """The key's fingerprint: the tiny kit's sources, a GGUF's bytes and converter code, a local
    folder's files (nothing for a hub id). Resolving checks the source: a bad one fails here."""
    if spec.name_or_path == "tiny":
        return tiny_sources(spec)
    return source_fingerprint(resolve_model_source(spec.name_or_path, spec.revision))


@stage(
    "base_model",
    section="model",
    code_version="2",
    tracked=False,
    flows=("pipeline", "evaluation"),
    fingerprint=model_sources,
    description="the starting checkpoint: a hub id or local dir (referenced), a GGUF or packaged "
    "model (converted), or the tiny kit's model (built)",
)
def base_model(job: Job, cfg: ModelSpec) -> ArtifactRef:
    # code_version 2: tiny tokenizer trained with Qwen2's pre-tokenizer (reloads identically everywhere)
    source = resolve_model_source(cfg.name_or_path, cfg.revision)
    if cfg.chat_template:
        return _with_chat_template(job, cfg, source)
    if (ref := referenced_model(source, cfg.revision)) is not None:
        # made (checked, hashed) by this run: the run's stage line says "ran", a rerun "cached"
        return ref.model_copy(update={"produced_by": job.ctx.run_id})
    if source.kind == "gguf":
        from sgpo.models.gguf import convert_gguf

        with scratch_dir("base_model") as tmp:
            out = convert_gguf(source.path, tmp / "model")
            job.log.info("converted %s into a safetensors checkpoint", source.path)
            summary = {**describe(source), **source_fingerprint(source)}
            return job.publish_model(out, summary=summary)
    from sgpo.models.tinykit import build_bundled_tiny_model

    with scratch_dir("base_model") as tmp:
        out = build_bundled_tiny_model(tmp / "model", cfg.tiny)
        return job.publish_model(out, summary={"tiny": True}, seeds={"init": cfg.tiny.seed})


def _with_chat_template(job: Job, cfg: ModelSpec, source) -> ArtifactRef:
    """The source's checkpoint copied into the store, its tokenizer given `cfg.chat_template`."""
    import shutil

    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.trainers import set_chat_template

    with scratch_dir("base_model") as tmp:
        out = tmp / "model"
        if source.kind == "local":
            shutil.copytree(source.path, out)
        elif source.kind == "hub":
            from huggingface_hub import snapshot_download

            snapshot_download(cfg.name_or_path, revision=cfg.revision, local_dir=out)
        elif source.kind == "gguf":
            from sgpo.models.gguf import convert_gguf

            out = convert_gguf(source.path, out)
        else:
            from sgpo.models.tinykit import build_bundled_tiny_model

            out = build_bundled_tiny_model(out, cfg.tiny)
        tokenizer = load_tokenizer(str(out), trust_remote_code=cfg.trust_remote_code)
        set_chat_template(tokenizer, cfg.chat_template, key="model.chat_template")
        tokenizer.save_pretrained(out)
        summary = {**describe(source), "chat_template": cfg.chat_template}
        return job.publish_model(out, summary=summary)


if __name__ == "__main__":
    raise SystemExit(stage_main(base_model))
