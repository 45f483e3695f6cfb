"""Multi-turn and system context through the model stages (issue 21, item 6): the perplexity filter
scores an answer given the row's whole conversation, and the refine stage (the Fig. 8/10 check's
initial-policy refinements) runs on a pairs table holding a multi-turn and a system-prompted row."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from artifacts.store import ArtifactStore
from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage

SYSTEM = [
    {"role": "system", "content": "Answer in French."},
    {"role": "user", "content": "Say hello."},
]
MULTI = [
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
    {"role": "user", "content": "And a vegetable?"},
]


def _row(pid, messages, reference, policy):
    return {
        "prompt_id": pid,
        "prompt": messages[-1]["content"],
        "messages": json.dumps(messages),
        "reference": reference,
        "policy": policy,
    }


@pytest.fixture()
def world(tmp_path):
    store_dir = tmp_path / "store"
    ctx = StageContext(store=StoreConfig(url=str(store_dir)), run_id="test")
    cfg = load_config("tiny", [f"store.url={store_dir}", "tracking.enabled=false"])
    base = run_stage(get_stage("base_model"), cfg.model, ctx, {})
    return ctx, cfg, base, ArtifactStore(str(store_dir))


def _manual_ppl(model_dir, messages, answer) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from sgpo.models.tinykit import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prefix = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    p = tok(prefix, add_special_tokens=False).input_ids
    r = tok(answer + tok.eos_token, add_special_tokens=False).input_ids
    with torch.no_grad():
        loss = model(
            input_ids=torch.tensor([p + r]), labels=torch.tensor([[-100] * len(p) + r])
        ).loss
    return math.exp(float(loss))


def test_the_perplexity_filter_scores_the_answer_given_the_whole_conversation(world):
    ctx, cfg, base, store = world
    rows = [
        {**_row("s", SYSTEM, "Bonjour.", "Hello."), "imp": "Bonjour !", "ext": None},
        {**_row("m", MULTI, "Carrot.", "Potato."), "imp": "A carrot.", "ext": None},
    ]
    annotations = store.publish_table(
        "annotate", "ctx-test", pa.Table.from_pylist(rows), manifest={}
    )
    ref = run_stage(
        get_stage("ppl_filter"), cfg.ppl_filter, ctx, {"policy": base, "annotations": annotations}
    )
    out = {r["prompt_id"]: r for r in store.read_table(ref).to_pylist()}
    model_dir = store.model_dir(base)
    for pid, messages, answer in (("s", SYSTEM, "Bonjour !"), ("m", MULTI, "A carrot.")):
        assert out[pid]["ppl"] == pytest.approx(_manual_ppl(model_dir, messages, answer), rel=1e-4)
        alone = _manual_ppl(model_dir, messages[-1:], answer)  # what the filter scored before
        assert out[pid]["ppl"] != pytest.approx(alone, rel=1e-3)  # the context changes the score
        assert json.loads(out[pid]["messages"]) == messages  # kept for the improver's prompt


def test_the_refine_stage_refines_each_pairs_answer_once(world):
    ctx, cfg, base, store = world
    rows = [
        {**_row("s", SYSTEM, "Bonjour.", "Hello."), "chosen": "Bonjour !", "rejected": "Hello."},
        {**_row("m", MULTI, "Carrot.", "Potato."), "chosen": "A carrot.", "rejected": "Potato."},
    ]
    pairs = store.publish_table("pairs", "ctx-test", pa.Table.from_pylist(rows), manifest={})
    cfg = load_config("tiny", ["pairs.sampling.max_new_tokens=8"])
    ref = run_stage(get_stage("refine"), cfg.pairs, ctx, {"refiner": base, "pairs": pairs})
    out = store.read_table(ref).to_pylist()
    assert [r["prompt_id"] for r in out] == ["s", "m"] and ref.summary["rows"] == 2
    assert all(isinstance(r["refinement"], str) for r in out)
    assert [r["chosen"] for r in out] == ["Bonjour !", "A carrot."]  # the pairs' columns stay
