"""Training mechanics shared by the SFT, improver-SFT and DPO stages; the loops are TRL's.

Hyper-parameters come from the stage's section of the recipe; hardware (DeepSpeed / FSDP,
number of processes) from an accelerate config chosen at launch, never from here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sgpo.config import DPOStageConfig, ORPOStageConfig, TrainConfig
from sgpo.core.job import scratch_dir
from sgpo.core.ranks import world_size
from sgpo.core.tracking import StageTracker
from sgpo.train.callbacks import mlflow_callback, zero_learning_rate_guard
from sgpo.train.checkpoints import load_model, save_checkpoint
from sgpo.train.lora import check_lora_config, save_lora, wrap_lora

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class TrainingDataError(ValueError):
    pass


# Named chat templates for base models that ship none (e.g. Meta-Llama-3-8B). chatml: ChatML turns,
# each assistant turn closed by the tokenizer's own EOS so that generation stops where training
# ended. zephyr: the `<|user|>` / `<|assistant|>` turns each closed by EOS, the format of the SAPO
# paper's ORPO-Mistral runs (its Appendix B calls it the Vicuna template).
NAMED_CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
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
            f"(named templates: {', '.join(NAMED_CHAT_TEMPLATES)}) or a Jinja template string"
        )


def dialogue_example(
    tokenizer, messages: list[dict[str, str]], answer: str
) -> dict[str, list[int]]:
    """One SFT example of a whole conversation: `input_ids` of `messages` + the final `answer` as
    the chat template renders them, and a `completion_mask` that is 1 on every assistant answer
    (with what the template closes it with, as TRL's prompt-completion examples have) and 0 on the
    rest. The answers' spans come from rendering each prefix of the conversation, so a template
    that does not render a conversation's beginning as a prefix of the whole is refused."""
    full = [*messages, {"role": "assistant", "content": answer}]
    text = tokenizer.apply_chat_template(full, tokenize=False)
    spans = []
    for j, m in enumerate(full):
        if m["role"] != "assistant":
            continue
        start = tokenizer.apply_chat_template(full[:j], tokenize=False, add_generation_prompt=True)
        end = tokenizer.apply_chat_template(full[: j + 1], tokenize=False)
        if not (text.startswith(start) and text.startswith(end)):
            raise TrainingDataError(
                "the chat template does not render the start of a conversation as the start of the "
                "whole conversation, so its answers cannot be located: use sft.assistant_turns=final "
                "with data.sft.turns=all"
            )
        spans.append((len(start), len(end)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= s < b for a, b in spans)) for s, _ in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "completion_mask": mask}


def common_args(cfg: TrainConfig, output_dir: str) -> dict[str, Any]:
    """TrainingArguments fields shared by SFTConfig and DPOConfig."""
    import torch

    micro = cfg.per_device_batch_size * world_size()
    if cfg.effective_batch_size % micro:
        raise ValueError(
            f"effective_batch_size {cfg.effective_batch_size} is not a multiple of per_device_batch_size "
            f"{cfg.per_device_batch_size} x {world_size()} devices"
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
        **({"optim": cfg.optimizer} if cfg.optimizer else {}),
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
    return {
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing": enabled
    }


def _quiet(trainer) -> None:
    """Metrics go to MLflow; the trainer's own stdout printer would drown the CLI's stage lines."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _callbacks(tracker: StageTracker | None) -> list:
    """The MLflow callback (rank 0 of a launched stage and in-process runs; other ranks have no tracker)."""
    return [mlflow_callback(tracker)] if tracker is not None else []


def _train_and_save(
    trainer,
    tokenizer,
    out_dir: str | Path,
    work: Path,
    cfg: TrainConfig | None = None,
    tracker: StageTracker | None = None,
) -> dict[str, float]:
    import time

    from sgpo.train.throughput import PeakMemory, throughput_metrics

    _quiet(trainer)
    # refuse a run whose every step has learning rate 0: it would publish the start model
    trainer.add_callback(zero_learning_rate_guard())
    with PeakMemory() as peak:
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics.update(throughput_metrics(trainer, seconds, peak))
    _save_trained(trainer, tokenizer, out_dir, cfg)
    shutil.rmtree(work, ignore_errors=True)
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith("perf.")})
    return metrics


def _save_trained(trainer, tokenizer, out_dir: str | Path, cfg: TrainConfig | None) -> None:
    """The trained model as a safetensors checkpoint in `out_dir` (rank 0 writes; sharded models are gathered)."""
    lora = getattr(cfg, "lora", None)
    if lora is not None:
        save_lora(trainer, tokenizer, out_dir, lora)
        return
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        # ZeRO-3 / FSDP: every rank takes part in gathering the full state dict; the main process writes
        out = Path(out_dir)
        trainer.save_model(str(out))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(out)
            for p in out.glob("*.bin"):
                p.unlink()
    elif trainer.accelerator.is_main_process:
        save_checkpoint(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out_dir)
    trainer.accelerator.wait_for_everyone()


def _trainable_model(model_dir: str, cfg: TrainConfig, *, trust_remote_code: bool = False):
    """The model to train: the checkpoint, wrapped in LoRA adapters when `cfg.lora` is set."""
    lora = getattr(cfg, "lora", None)
    model = load_model(
        model_dir,
        trust_remote_code=trust_remote_code,
        quantization=lora.quantization if lora is not None else "none",
    )
    if lora is not None:
        from transformers import set_seed

        set_seed(cfg.seed)  # the adapters' random init: the same run gives the same checkpoint
        model = wrap_lora(model, lora, gradient_checkpointing=cfg.gradient_checkpointing)
    return model


def check_lora(model_dir: str, cfg: TrainConfig, *, trust_remote_code: bool = False) -> None:
    """A LoRA setting that cannot work (target modules absent from the model, 4-bit without CUDA or
    bitsandbytes, peft missing) fails here, before any weights are loaded."""
    lora = getattr(cfg, "lora", None)
    if lora is not None:
        check_lora_config(model_dir, lora, trust_remote_code=trust_remote_code)


def train_sft(
    model_dir: str,
    examples: list[tuple[list[dict[str, str]], str]],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    tracker: StageTracker,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Supervised fine-tuning on (prompt conversation, completion text); loss on the completion only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sgpo.models.tinykit import load_tokenizer

    if not examples:
        raise TrainingDataError("no training examples")
    check_lora(model_dir, cfg, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    # saved with the checkpoint: every later stage (sampling, pairs, judging) uses the same template
    set_chat_template(tokenizer, getattr(cfg, "chat_template", None))
    if getattr(cfg, "assistant_turns", "final") == "all":  # every answer of the conversation
        ds = Dataset.from_list([dialogue_example(tokenizer, p, c) for p, c in examples])
    else:
        ds = Dataset.from_list(
            [
                {"prompt": p, "completion": [{"role": "assistant", "content": c}]}
                for p, c in examples
            ]
        )
    work = Path(out_dir).parent / "trainer"
    args = SFTConfig(
        **common_args(cfg, str(work)),
        max_length=cfg.max_length,
        completion_only_loss=True,
        **cfg.trl,  # any other SFTConfig field, checked when the config loaded
    )
    trainer = SFTTrainer(
        model=_trainable_model(model_dir, cfg, trust_remote_code=trust_remote_code),
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=_callbacks(tracker),
    )
    return _train_and_save(trainer, tokenizer, out_dir, work, cfg, tracker)


def train_dpo(
    model_dir: str,
    pairs: list[tuple[list[dict[str, str]], str, str]],
    cfg: DPOStageConfig,
    out_dir: str | Path,
    *,
    tracker: StageTracker | None,
    ref_model_dir: str | None = None,
    trust_remote_code: bool = False,
    ref_logps: list[tuple[float, float]] | None = None,
) -> dict[str, float]:
    """DPO on (prompt conversation, chosen, rejected). The reference is `ref_model_dir`, or the
    starting model itself when None (TRL then keeps a frozen copy); with `ref_logps` (the reference's
    summed (chosen, rejected) log-probs per pair, `reference_logps`) no reference model is loaded."""
    from trl import DPOConfig

    from sgpo.models.tinykit import load_tokenizer

    if not pairs:
        raise TrainingDataError("no preference pairs")
    if ref_logps is not None and len(ref_logps) != len(pairs):
        raise TrainingDataError(f"{len(ref_logps)} reference log-prob rows for {len(pairs)} pairs")
    check_lora(model_dir, cfg, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    ds = pairs_dataset(pairs, ref_logps)
    work = Path(out_dir).parent / "trainer"
    args = DPOConfig(
        **common_args(cfg, str(work)),
        max_length=cfg.max_length,
        beta=cfg.beta,
        loss_type=cfg.loss_type.split("+"),  # "sigmoid+sft": DPO + NLL on chosen (RPO)
        precompute_ref_log_probs=ref_logps is not None,
        **cfg.trl,  # any other DPOConfig field, checked when the config loaded
    )
    ref = (
        load_model(ref_model_dir, trust_remote_code=trust_remote_code)
        if ref_model_dir and ref_logps is None
        else None
    )
    trainer = dpo_trainer_class()(
        model=_trainable_model(model_dir, cfg, trust_remote_code=trust_remote_code),
        ref_model=ref,
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=_callbacks(tracker),
    )
    return _train_and_save(trainer, tokenizer, out_dir, work, cfg, tracker)


def train_orpo(
    model_dir: str,
    pairs: list[tuple[list[dict[str, str]], str, str]],
    cfg: ORPOStageConfig,
    out_dir: str | Path,
    *,
    tracker: StageTracker | None,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """ORPO on (prompt conversation, chosen, rejected): NLL of the chosen answer + lambda x the
    odds-ratio term (TRL's ORPOTrainer); no reference model."""
    import warnings

    from sgpo.models.tinykit import load_tokenizer

    with warnings.catch_warnings():  # ORPO lives in trl.experimental: known, and said once here
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    if not pairs:
        raise TrainingDataError("no preference pairs")
    check_lora(model_dir, cfg, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    set_chat_template(tokenizer, None, key="model.chat_template")
    work = Path(out_dir).parent / "trainer"
    common = common_args(cfg, str(work))
    if cfg.warmup_steps:
        common["warmup_steps"] = cfg.warmup_steps
    args = ORPOConfig(**common, max_length=cfg.max_length, beta=cfg.lam)
    trainer = ORPOTrainer(
        model=_trainable_model(model_dir, cfg, trust_remote_code=trust_remote_code),
        args=args,
        train_dataset=pairs_dataset(pairs),
        processing_class=tokenizer,
        callbacks=_callbacks(tracker),
    )
    return _train_and_save(trainer, tokenizer, out_dir, work, cfg, tracker)


def pairs_dataset(
    pairs: list[tuple[list[dict[str, str]], str, str]],
    ref_logps: list[tuple[float, float]] | None = None,
):
    from datasets import Dataset

    rows = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in pairs
    ]
    if ref_logps is not None:
        for row, (lc, lr) in zip(rows, ref_logps):
            row[REF_COLUMNS[0]], row[REF_COLUMNS[1]] = float(lc), float(lr)
    return Dataset.from_list(rows)


def dpo_trainer_class():
    """TRL's DPOTrainer, taking reference log-probs already in the dataset (the cached artifact) as they are.

    TRL 1.16 reads `ref_chosen_logps` / `ref_rejected_logps` from the batch when
    `precompute_ref_log_probs=True` and then keeps no reference model; left alone it would compute
    them again at start-up with the policy. Columns present -> that pass is skipped.

    This overrides TRL's private `_precompute_ref_logps`: TRL 1.16 has no public way to hand it
    log-probs computed elsewhere (its precompute pass always runs and re-adds the columns; a
    collator of our own would have to repeat the trainer's pad-token set-up). The override only
    returns early; the check below fails with this explanation if TRL drops or renames the hook."""
    from trl import DPOTrainer

    if not hasattr(
        DPOTrainer, "_precompute_ref_logps"
    ):  # pragma: no cover - a TRL without the hook
        raise RuntimeError(
            "this TRL's DPOTrainer has no _precompute_ref_logps: use dpo.reference_logps=live"
        )

    class CachedRefDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            if all(c in dataset.column_names for c in REF_COLUMNS):
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    return CachedRefDPOTrainer


def sft_and_publish(job, start, examples: list[tuple[list[dict[str, str]], str]], cfg: TrainConfig):
    """SFT of `start` on `examples`, published as the stage's model (the sft and improver_sft stages):
    summary with the example count and final loss, the seed, and the training metrics in the manifest."""
    with scratch_dir(job.stage.name) as tmp:
        metrics = train_sft(
            job.model_dir(start),
            examples,
            cfg,
            tmp / "model",
            tracker=job.tracker,
            trust_remote_code=job.ctx.trust_remote_code,
        )
        return job.publish_model(
            tmp / "model",
            summary={"examples": len(examples), "train_loss": metrics.get("train_loss")},
            seeds={"train": cfg.seed},
            extra={"train_metrics": metrics},
        )
