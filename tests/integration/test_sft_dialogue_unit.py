"""The SFT unit (issue 21, item 6): `sft.assistant_turns: all` makes one example per dialogue whose
loss covers every assistant answer, on a real chat template (the tiny model's ChatML)."""

from __future__ import annotations

import json

from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage

DIALOGUE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
    {"role": "user", "content": "And a vegetable?"},
    {"role": "assistant", "content": "Carrot."},
]


def test_every_answer_and_only_the_answers_carry_the_loss(tiny_model_dir):
    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.trainers import dialogue_example

    tok = load_tokenizer(tiny_model_dir)
    ex = dialogue_example(tok, DIALOGUE[:-1], "Carrot.")
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(DIALOGUE, tokenize=False)
    learned = tok.decode([t for t, m in zip(ex["input_ids"], ex["completion_mask"]) if m])
    # the two answers with what ChatML closes them with; not the system prompt, not the questions
    assert learned == "Apple.<|im_end|>\nCarrot.<|im_end|>\n"


def test_one_sft_example_per_dialogue(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": DIALOGUE}) + "\n" for _ in range(4)))
    store = tmp_path / "store"
    ctx = StageContext(store=StoreConfig(url=str(store)), run_id="test")
    common = [f"store.url={store}", "tracking.enabled=false", "sft.epochs=1"]
    common += ["sft.per_device_batch_size=2", "sft.effective_batch_size=2"]
    dialogues = load_config(
        "tiny", [*common, f"data.sft.path={data}", "data.sft.turns=last", "sft.assistant_turns=all"]
    )
    answers = load_config("tiny", [*common, f"data.sft.path={data}", "data.sft.turns=all"])
    base = run_stage(get_stage("base_model"), dialogues.model, ctx, {})
    steps = {}
    for name, cfg in (("dialogues", dialogues), ("answers", answers)):
        rows = run_stage(get_stage("prepare"), cfg.data.sft, ctx, {})
        ref = run_stage(get_stage("sft"), cfg.sft, ctx, {"base": base, "data": rows})
        metrics = ctx.open_store().read_manifest(ref)["train_metrics"]
        steps[name] = metrics["perf.samples"] / 2  # 2 examples a step
    # 4 dialogues of 2 answers: one epoch is 4 / 2 = 2 steps against 8 / 2 = 4
    assert steps == {"dialogues": 2, "answers": 4}
