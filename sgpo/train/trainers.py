"""Training mechanics shared by the SFT, improver-SFT and DPO stages; the loops are TRL's.

Hyper-parameters come from the stage's section of the recipe; hardware (DeepSpeed / FSDP,
number of processes) from an accelerate config chosen at launch, never from here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sgpo.config.pipeline import DPOStageConfig, TrainConfig
    from sgpo.core.tracking import StageTracker


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
            f"(named templates: {', '.join(NAMED_CHAT_TEMPLATES)}) or a Jinja template string"
        )


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def main_process_value(value: Any) -> Any:
    """Rank 0's `value` on every rank of a launched stage (the process group is set up here if needed);
    the value itself outside a launch."""
    if _world_size() <= 1:
        return value
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState(cpu=not torch.cuda.is_available())
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def common_args(cfg: TrainConfig, output_dir: str) -> dict[str, Any]:
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
    return [tracker.trainer_callback()] if tracker is not None else []


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
        from sgpo.train.lora import save_lora

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


def load_model(model_dir: str, *, trust_remote_code: bool = False, quantization: str = "none"):
    """A causal LM from a checkpoint folder; a LoRA adapter artifact (lora.keep_adapter) is loaded onto
    its base and merged, so every downstream stage reads either kind."""
    import torch
    from transformers import AutoModelForCausalLM

    from sgpo.models.tinykit import check_model_dir

    if (Path(model_dir) / "adapter_config.json").is_file():
        from sgpo.train.lora import load_adapter_model

        return load_adapter_model(model_dir, trust_remote_code=trust_remote_code)
    check_model_dir(model_dir)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    kw: dict[str, Any] = {}
    if quantization == "4bit":
        from sgpo.train.lora import bnb_4bit_config

        kw["quantization_config"] = bnb_4bit_config()
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code, **kw
    )


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

        from sgpo.train.lora import wrap_lora

        set_seed(cfg.seed)  # the adapters' random init: the same run gives the same checkpoint
        model = wrap_lora(model, lora, gradient_checkpointing=cfg.gradient_checkpointing)
    return model


def check_lora(model_dir: str, cfg: TrainConfig, *, trust_remote_code: bool = False) -> None:
    """A LoRA setting that cannot work (target modules absent from the model, 4-bit without CUDA or
    bitsandbytes, peft missing) fails here, before any weights are loaded."""
    lora = getattr(cfg, "lora", None)
    if lora is not None:
        from sgpo.train.lora import check_lora_config

        check_lora_config(model_dir, lora, trust_remote_code=trust_remote_code)


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
    ds = Dataset.from_list(
        [{"prompt": p, "completion": [{"role": "assistant", "content": c}]} for p, c in examples]
    )
    work = Path(out_dir).parent / "trainer"
    args = SFTConfig(
        **common_args(cfg, str(work)), max_length=cfg.max_length, completion_only_loss=True
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
    ds = _pairs_dataset(pairs, ref_logps)
    work = Path(out_dir).parent / "trainer"
    args = DPOConfig(
        **common_args(cfg, str(work)),
        max_length=cfg.max_length,
        beta=cfg.beta,
        loss_type=cfg.loss_type.split("+"),  # "sigmoid+sft": DPO + NLL on chosen (RPO)
        precompute_ref_log_probs=ref_logps is not None,
    )
    ref = (
        load_model(ref_model_dir, trust_remote_code=trust_remote_code)
        if ref_model_dir and ref_logps is None
        else None
    )
    trainer = _dpo_trainer_class()(
        model=_trainable_model(model_dir, cfg, trust_remote_code=trust_remote_code),
        ref_model=ref,
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=_callbacks(tracker),
    )
    return _train_and_save(trainer, tokenizer, out_dir, work, cfg, tracker)


REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def _pairs_dataset(
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


def _dpo_trainer_class():
    """TRL's DPOTrainer, taking reference log-probs already in the dataset (the cached artifact) as they are.

    TRL 1.16 reads `ref_chosen_logps` / `ref_rejected_logps` from the batch when
    `precompute_ref_log_probs=True` and then keeps no reference model; left alone it would compute
    them again at start-up with the policy. Columns present -> that pass is skipped."""
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


def reference_logps(
    model_dir: str, pairs: list, cfg: DPOStageConfig, **kw: Any
) -> list[tuple[float, float]]:
    """The reference model's summed log-probs of each pair's chosen and rejected answer
    (`reference_logps_and_tokens` without the token counts; same keyword arguments)."""
    return [(a, b) for a, b, _, _ in reference_logps_and_tokens(model_dir, pairs, cfg, **kw)]


def reference_logps_and_tokens(
    model_dir: str,
    pairs: list[tuple[list[dict[str, str]], str, str]],
    cfg: DPOStageConfig,
    *,
    batch_size: int = 8,
    trust_remote_code: bool = False,
) -> list[tuple[float, float, int, int]]:
    """The reference model's summed log-probs of each pair's chosen and rejected answer, exactly as TRL's
    DPOTrainer computes them (its tokenisation, truncation and `compute_ref_log_probs`), but batched over
    length-sorted pairs, without gradients, once; with the number of answer tokens each sum covers (after
    truncation: per-token perplexities for the report). Under a launch each rank takes a share of the batches."""
    import torch
    from trl import DPOConfig

    from sgpo.models.tinykit import load_tokenizer

    if not pairs:
        raise TrainingDataError("no preference pairs")
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, trust_remote_code=trust_remote_code)
    with tempfile.TemporaryDirectory(prefix="sgpo-reflogps-") as work:
        args = DPOConfig(
            **{**common_args(cfg, work), "gradient_accumulation_steps": 1},
            max_length=cfg.max_length,
            beta=cfg.beta,
            loss_type=cfg.loss_type.split("+"),
            precompute_ref_log_probs=True,
        )
        # policy = the reference itself; precompute on and our no-op hook: TRL builds no second copy
        source = _pairs_dataset(pairs, [(0.0, 0.0)] * len(pairs)).add_column(
            "pair_index", list(range(len(pairs)))
        )
        trainer = _dpo_trainer_class()(
            model=model, args=args, train_dataset=source, processing_class=tokenizer
        )
        # tokenised and filtered the way training sees it: TRL drops pairs whose prompt fills max_length (their
        # log-probs stay NaN; training drops the same pairs)
        ds = trainer.train_dataset
        index = ds["pair_index"]
        ds = ds.remove_columns(["pair_index"])
        lengths = [
            len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in ds
        ]
        order = sorted(
            range(len(ds)), key=lambda i: -lengths[i]
        )  # longest first: an OOM shows at once
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        state = trainer.accelerator.state
        mine = batches[state.process_index :: state.num_processes]
        device = trainer.accelerator.device
        net = model.to(device).eval()
        found: dict[int, tuple[float, float, int, int]] = {}
        with torch.no_grad():
            for idx in mine:
                batch = trainer.data_collator([ds[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items() if k not in REF_COLUMNS}
                lc, lr = trainer.compute_ref_log_probs(net, batch)
                # the collator stacks chosen rows then rejected rows; its completion mask is what the sums cover
                nc, nr = batch["completion_mask"].sum(dim=1).chunk(2, dim=0)
                for i, a, b, ta, tb in zip(
                    idx,
                    lc.float().cpu().tolist(),
                    lr.float().cpu().tolist(),
                    nc.cpu().tolist(),
                    nr.cpu().tolist(),
                ):
                    found[index[i]] = (a, b, int(ta), int(tb))
        if state.num_processes > 1:
            from accelerate.utils import gather_object

            merged: dict[int, tuple[float, float, int, int]] = {}
            for part in gather_object([found]):
                merged.update(part)
            found = merged
    nan = float("nan")
    return [found.get(i, (nan, nan, 0, 0)) for i in range(len(pairs))]


def sft_and_publish(job, start, examples: list[tuple[list[dict[str, str]], str]], cfg: TrainConfig):
    """SFT of `start` on `examples`, published as the stage's model (the sft and improver_sft stages):
    summary with the example count and final loss, the seed, and the training metrics in the manifest."""
    from sgpo.core.stage import scratch_dir

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
