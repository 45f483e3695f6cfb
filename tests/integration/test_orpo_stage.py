"""The SAPO paper's ORPO-based starts (issue 21, item 4): a raw base given a chat template by
`model.chat_template` (stored with it), and the `orpo` stage training from it on preference pairs."""

from __future__ import annotations

from pathlib import Path

from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext, run_stage
from tasks import get_stage


def test_orpo_from_a_base_given_the_zephyr_template(tmp_path):
    from safetensors.torch import load_file

    from sgpo.models.tinykit import load_tokenizer

    store = tmp_path / "store"
    ctx = StageContext(store=StoreConfig(url=str(store)), run_id="test")
    cfg = load_config(
        "tiny",
        [
            f"store.url={store}",
            "tracking.enabled=false",
            "method=orpo",
            "start=base",
            "model.chat_template=zephyr",
            "orpo.max_steps=2",
        ],
    )
    plain = get_stage("base_model").cache_key(load_config("tiny").model, {})
    assert get_stage("base_model").cache_key(cfg.model, {}) != plain  # another model, another key
    base = run_stage(get_stage("base_model"), cfg.model, ctx, {})
    base_dir = ctx.open_store().model_dir(base)
    tok = load_tokenizer(base_dir)
    eos = tok.eos_token
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"<|user|>\nhi{eos}\n<|assistant|>\n"  # the paper's Appendix B format
    pairs = run_stage(get_stage("prepare"), cfg.data.prefs, ctx, {})
    ref = run_stage(get_stage("orpo"), cfg.orpo, ctx, {"start": base, "pairs": pairs})
    assert ref.summary["pairs"] == 16 and ref.summary["train_loss"] > 0
    out = Path(ctx.open_store().model_dir(ref))
    assert load_tokenizer(str(out)).chat_template == tok.chat_template  # saved with the policy
    before = load_file(str(Path(base_dir) / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 0  # it trained
