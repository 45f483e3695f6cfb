"""Training mechanics shared by the SFT, improver-SFT and DPO stages; the loops are TRL's.

Hyper-parameters come from the stage's section of the recipe; hardware (DeepSpeed / FSDP,
number of processes) from an accelerate config chosen at launch, never from here.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sgpo.config import DPOStageConfig, TrainConfig
    from sgpo.tracking import StageTracker


class TrainingDataError(ValueError):
    pass


# Named chat templates for base models that ship none (e.g. Meta-Llama-3-8B): ChatML turns, each
# assistant turn closed by the tokenizer's own EOS so that generation stops where training ended.
NAMED_CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}


def set_chat_template(tokenizer, template: str | None, *, key: str = "sft.chat_template") -> None:
    """Give `tokenizer` the configured template (a name above, or a Jinja string); without one, a
    tokenizer that has none is an error naming the key, before any training."""
    if template:
        tokenizer.chat_template = NAMED_CHAT_TEMPLATES.get(template, template)
    elif not getattr(tokenizer, "chat_template", None):
        raise TrainingDataError(
            f"the model's tokenizer has no chat template (a base model?): set {key}, e.g. {key}=chatml "
            f"(named templates: {', '.join(NAMED_CHAT_TEMPLATES)}) or a Jinja template string")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def common_args(cfg: "TrainConfig", output_dir: str) -> dict[str, Any]:
    """TrainingArguments fields shared by SFTConfig and DPOConfig."""
    import torch

    micro = cfg.per_device_batch_size * _world_size()
    if cfg.effective_batch_size % micro:
        raise ValueError(
            f"effective_batch_size {cfg.effective_batch_size} is not a multiple of per_device_batch_size "
            f"{cfg.per_device_batch_size} x {_world_size()} devices"
        )
    use_cpu = not torch.cuda.is_available()
    return dict(
        output_dir=output_dir,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.effective_batch_size // micro,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16 and not use_cpu,
        use_cpu=use_cpu,
        **_checkpointing_arg(cfg.gradient_checkpointing),
        logging_steps=cfg.logging_steps,
        save_strategy="no",  # the stage publishes the final checkpoint itself
        report_to=[],  # metrics go to the stage's own MLflow run through our callback
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _checkpointing_arg(enabled: bool) -> dict[str, bool]:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def _quiet(trainer) -> None:
    """Metrics go to MLflow; the trainer's own stdout printer would drown the CLI's stage lines."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _train_and_save(trainer, tokenizer, out_dir: str | Path, work: Path) -> dict[str, float]:
    _quiet(trainer)
    result = trainer.train()
    save_checkpoint(trainer.model, tokenizer, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}


def load_model(model_dir: str, *, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    from sgpo.tinykit import check_model_dir

    check_model_dir(model_dir)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)


def save_checkpoint(model, tokenizer, out_dir: str | Path) -> Path:
    """safetensors weights + config + tokenizer, and nothing pickled."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for p in out.glob("*.bin"):  # e.g. training_args.bin is a pickle: never stored
        p.unlink()
    return out


def train_sft(
    model_dir: str,
    examples: list[tuple[list[dict[str, str]], str]],
    cfg: "TrainConfig",
    out_dir: str | Path,
    *,
    tracker: "StageTracker",
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Supervised fine-tuning on (prompt conversation, completion text); loss on the completion only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sgpo.tinykit import load_tokenizer

    if not examples:
        raise TrainingDataError("no training examples")
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    # saved with the checkpoint: every later stage (sampling, pairs, judging) uses the same template
    set_chat_template(tokenizer, getattr(cfg, "chat_template", None))
    ds = Dataset.from_list(
        [{"prompt": p, "completion": [{"role": "assistant", "content": c}]} for p, c in examples]
    )
    work = Path(out_dir).parent / "trainer"
    args = SFTConfig(**common_args(cfg, str(work)), max_length=cfg.max_length, completion_only_loss=True)
    trainer = SFTTrainer(
        model=load_model(model_dir, trust_remote_code=trust_remote_code),
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=[tracker.trainer_callback()],
    )
    return _train_and_save(trainer, tokenizer, out_dir, work)


def train_dpo(
    model_dir: str,
    pairs: list[tuple[list[dict[str, str]], str, str]],
    cfg: "DPOStageConfig",
    out_dir: str | Path,
    *,
    tracker: "StageTracker",
    ref_model_dir: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """DPO on (prompt conversation, chosen, rejected). The reference is `ref_model_dir`, or the
    starting model itself when None (TRL then keeps a frozen copy)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from sgpo.tinykit import load_tokenizer

    if not pairs:
        raise TrainingDataError("no preference pairs")
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    ds = Dataset.from_list(
        [
            {
                "prompt": p,
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for p, c, r in pairs
        ]
    )
    work = Path(out_dir).parent / "trainer"
    args = DPOConfig(
        **common_args(cfg, str(work)), max_length=cfg.max_length, beta=cfg.beta,
        loss_type=cfg.loss_type.split("+"),  # "sigmoid+sft": DPO + NLL on chosen (RPO), equal weights
    )
    ref = load_model(ref_model_dir, trust_remote_code=trust_remote_code) if ref_model_dir else None
    trainer = DPOTrainer(
        model=load_model(model_dir, trust_remote_code=trust_remote_code),
        ref_model=ref,
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=[tracker.trainer_callback()],
    )
    return _train_and_save(trainer, tokenizer, out_dir, work)
