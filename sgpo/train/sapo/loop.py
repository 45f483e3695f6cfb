"""The SAPO loop: regenerate segments with the EMA model, push to the replay buffer, train on draws.

What comes from libraries and what is written here, and why:
- TRL does the losses and log-prob gathering: the DPO loss, its rewards / margins / accuracies and
  the fused log-prob head are `trl.DPOTrainer.compute_loss`; the ORPO loss and its log-odds are
  `trl.experimental.orpo.ORPOTrainer.get_batch_loss_metrics`. Each trainer is built once, as a
  loss engine on our batches; its `train()` is never called, because SAPO's data does not exist
  before the step that generates it (the trainers' loops iterate a fixed dataset). TRL's
  `DataCollatorForPreference` pads the batches; the EMA soft update is TRL's
  `SyncRefModelCallback.sync_target_model` (see ema.py).
- transformers does the optimiser choice (`Trainer.get_optimizer_cls_and_kwargs`, any `optim`
  name), the LR schedule (`get_scheduler`) and generation (`generate`, see generate.py).
- Written here, because no library has them: segment cutting and splicing (segment.py), the
  use-weighted FIFO replay buffer (buffer.py), when the EMA and the reference are refreshed
  (ema.py), this loop, and checkpoints that hold policy + EMA + buffer + optimiser + RNG without
  pickle (checkpoint.py; the trainers' own checkpoints pickle the optimiser and know no buffer).

Batch semantics (the published runs'): a step takes `batch_size x buffers` consecutive rows of the
epoch's order (the last batch of an epoch filled from its start, as accelerate's even batches do);
buffer k gets rows [k*batch_size, (k+1)*batch_size) of them, regenerates their segments, pushes the
pairs and gives `batch_size` draws; the step's loss is the mean over buffers of each buffer's mean
loss. Launched on P processes (sgpo.train.sapo.launch), process r holds buffers
[r*buffers/P, (r+1)*buffers/P) and the gradients are averaged over processes (collective.py): the
same arithmetic as one process holding them all, which is why every step-counted setting (EMA,
reference refresh, schedule) means the same at any P.

Determinism: every random choice of step s for buffer k (cut positions, sampling seed, buffer
draws) comes from a generator seeded by (cfg.seed, s, purpose, k), and the data order of epoch e
from (cfg.seed, e); so a run resumed from a checkpoint at step s repeats exactly what the
uninterrupted run did (CPU, one thread), with any number of processes. The global RNG states are
checkpointed too.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgpo.config import SAPOConfig, SAPOConfigError, check_config
from sgpo.train.callbacks import check_learning_rate_moves
from sgpo.train.sapo.buffer import BufferEntry, ReplayBuffer, prompt_json
from sgpo.train.sapo.collective import (
    Processes,
    any_process,
    average_gradients,
    barrier,
    mean_over_processes,
    start_processes,
)
from sgpo.train.sapo.ema import (
    copy_weights,
    ema_due,
    ema_update,
    reference_refresh_due,
    reference_source,
)
from sgpo.train.sapo.generate import SamplingSettings, hf_regenerate
from sgpo.train.sapo.segment import Cut, plan_cut, splice_rejected, truncate_pair

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict[str, float]], None]
TIMERS = ("generation", "training", "ema", "checkpoint")


class SAPOInterrupted(RuntimeError):
    """SIGTERM arrived; a checkpoint of the finished steps was written before this was raised."""


@dataclass
class Example:
    """One (x, y+) row, tokenised once: prompt ids (chat template, generation prompt), the answer's
    content ids and the template's end of an assistant turn (y+ = content + end, segment.py)."""

    messages: list[dict[str, str]]
    prompt_ids: list[int]
    content_ids: list[int]
    end_ids: list[int]
    chosen_text: str

    @property
    def answer_ids(self) -> list[int]:
        return self.content_ids + self.end_ids


@dataclass
class SAPOResult:
    steps: int
    ema_updates: int
    buffer_size: int  # entries in all buffers, over all processes
    buffer_mean_uses: float
    resumed_from_step: int | None
    timings: dict[
        str, float
    ]  # seconds spent in generation / training / ema / checkpoint by THIS process
    last_metrics: dict[str, float] = field(default_factory=dict)
    prompts_dropped: int = 0  # rows dropped for a prompt of max_prompt_length tokens or more


# --------------------------------------------------------------------------- seeds and data


def derived_seed(seed: int, *parts: Any) -> int:
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**62 - 1)


def step_rng(seed: int, step: int, purpose: str) -> random.Random:
    return random.Random(derived_seed(seed, step, purpose))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(derived_seed(seed, "epoch", epoch)).shuffle(order)
    return order


def rows_for_step(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Row indices of the data mini-batch of `step` (epochs of ceil(n / batch_size) steps): always
    `batch_size` of them, a short last batch filled from the start of the epoch's order (what
    accelerate's even batches did in the published runs)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, index = divmod(step, per_epoch)
    order = epoch_order(n, seed, epoch)
    rows = order[index * batch_size : (index + 1) * batch_size]
    while len(rows) < batch_size:
        rows += order[: batch_size - len(rows)]
    return rows


def buffer_rows(step_rows: list[int], k: int, batch_size: int) -> list[int]:
    """The rows of a step that buffer k takes."""
    return step_rows[k * batch_size : (k + 1) * batch_size]


def total_steps(cfg: SAPOConfig, n_rows: int) -> int:
    return (
        cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * math.ceil(n_rows / cfg.pairs_per_step)
    )


def turn_end(tokenizer) -> list[int]:
    """The tokens the chat template writes after an assistant answer's content (SmolLM2 and ChatML:
    `<|im_end|>` + newline; a template that adds the tokenizer's EOS: that too), i.e. how TRL's DPO
    sees a chosen answer end. A template whose answer turn cannot be found this way: [EOS]."""
    probe = "Probe answer."
    user = [{"role": "user", "content": "Probe question?"}]

    def ids(x: Any) -> list[int]:
        return list(x["input_ids"] if hasattr(x, "keys") else x)

    prompt = ids(tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True))
    full = ids(
        tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": probe}], tokenize=True
        )
    )
    content = tokenizer(probe, add_special_tokens=False)["input_ids"]
    n = len(prompt)
    if (
        full[:n] == prompt
        and full[n : n + len(content)] == content
        and len(full) > n + len(content)
    ):
        return full[n + len(content) :]
    return [tokenizer.eos_token_id]


def stop_tokens(tokenizer, end: list[int]) -> set[int]:
    """Where a regenerated segment B' stops: the tokenizer's EOS and the first token of the turn's end."""
    return {tokenizer.eos_token_id, end[0]}


def tokenize_rows(
    rows: list[tuple[list[dict[str, str]], str]], tokenizer, cfg: SAPOConfig
) -> list[Example]:
    """Tokenise and validate the (prompt conversation, chosen answer) rows; errors name the key.
    With `long_prompts: drop`, rows whose prompt has max_prompt_length tokens or more are left out
    (see `kept_rows`). A pair too long for max_length keeps the end of its prompt and the start of
    its answer's content, and still ends with the turn's end (as y- will)."""
    return [ex for ex in _tokenize(rows, tokenizer, cfg) if ex is not None]


def kept_rows(examples: list[Example | None]) -> int:
    return sum(ex is not None for ex in examples)


def _tokenize(
    rows: list[tuple[list[dict[str, str]], str]], tokenizer, cfg: SAPOConfig
) -> list[Example | None]:
    if not rows:
        raise SAPOConfigError("rows", "the dataset is empty: SAPO needs (prompt, chosen) rows")
    end = turn_end(tokenizer)
    out: list[Example | None] = []
    for i, (messages, chosen) in enumerate(rows):
        if not messages:
            raise SAPOConfigError(f"rows[{i}].prompt", "the prompt conversation is empty")
        content = tokenizer(chosen, add_special_tokens=False)["input_ids"]
        if len(content) < 1:
            raise SAPOConfigError(
                f"rows[{i}].chosen", f"the chosen answer {chosen!r} is shorter than one token"
            )
        prompt = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        if cfg.long_prompts == "drop" and len(prompt) >= cfg.max_prompt_length:
            out.append(None)
            continue
        prompt, content = truncate_pair(
            prompt, content, cfg.max_prompt_length, cfg.max_length - len(end)
        )
        out.append(Example(messages, prompt, content, end, chosen))
    return out


# --------------------------------------------------------------------------- loss engines (TRL)


@dataclass
class LossEngine:
    kind: str  # dpo | orpo
    trainer: Any
    pad_token_id: int
    max_length: int


def make_loss_engine(cfg: SAPOConfig, policy, reference, tokenizer, work_dir: str) -> LossEngine:
    """A TRL trainer used only for its loss (see the module docstring)."""
    import torch
    from datasets import Dataset

    use_cpu = not torch.cuda.is_available()
    section = cfg.dpo if cfg.loss == "dpo" else cfg.orpo
    # optim / learning_rate / weight_decay are read back by make_optimizer through transformers
    common = dict(
        output_dir=work_dir,
        use_cpu=use_cpu,
        bf16=False,
        report_to=[],
        disable_tqdm=True,
        max_length=cfg.max_length,
        seed=cfg.seed,
        save_strategy="no",
        dataloader_num_workers=0,
        optim=section.optimizer,
        learning_rate=section.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    if cfg.loss == "dpo":
        from trl import DPOConfig, DPOTrainer

        # The trainer wants a dataset at construction; one dummy pair, never trained on.
        ds = Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": "x"}],
                    "chosen": [{"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "assistant", "content": "b"}],
                }
            ]
        )
        args = DPOConfig(**common, beta=cfg.dpo.beta, loss_type=[cfg.dpo.loss_type])
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=ds,
            processing_class=tokenizer,
        )
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        ds = Dataset.from_list([{"prompt": "x", "chosen": "a", "rejected": "b"}])
        args = ORPOConfig(**common, beta=cfg.orpo.lam)
        trainer = ORPOTrainer(model=policy, args=args, train_dataset=ds, processing_class=tokenizer)
    _quiet(trainer)
    return LossEngine(cfg.loss, trainer, tokenizer.pad_token_id, cfg.max_length)


def _quiet(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def collate(engine: LossEngine, entries: list[BufferEntry], device) -> dict:
    """TRL's preference collator: [chosen..., rejected...] rows, right padded, completion mask."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collator = DataCollatorForPreference(
        pad_token_id=engine.pad_token_id, max_length=engine.max_length
    )
    batch = collator(
        [
            {"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids}
            for e in entries
        ]
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    if engine.kind == "dpo":
        return batch
    # ORPOTrainer's batch format: chosen_/rejected_ input ids, attention masks, labels (-100 off the answer)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    out = {}
    for name, tensor in (
        ("input_ids", batch["input_ids"]),
        ("attention_mask", batch["attention_mask"]),
        ("labels", labels),
    ):
        chosen, rejected = tensor.chunk(2, dim=0)
        out[f"chosen_{name}"], out[f"rejected_{name}"] = chosen, rejected
    return out


def loss_and_metrics(
    engine: LossEngine, policy, entries: list[BufferEntry], device
) -> tuple[Any, dict[str, float]]:
    batch = collate(engine, entries, device)
    if engine.kind == "dpo":
        trainer = engine.trainer
        loss = trainer.compute_loss(policy, batch)
        metrics = {k: float(v[-1]) for k, v in trainer._metrics["train"].items() if v}
        trainer._metrics["train"].clear()
        return loss, metrics
    loss, metrics = engine.trainer.get_batch_loss_metrics(policy, batch, train_eval="train")
    return loss, {k: float(v) for k, v in metrics.items()}


def make_optimizer(cfg: SAPOConfig, engine: LossEngine, policy, steps: int):
    """transformers' optimiser for the configured `optim` name (read from the engine's training
    arguments, which carry optim / learning_rate), one parameter group, and its LR schedule."""
    from transformers import Trainer, get_scheduler

    section = cfg.dpo if cfg.loss == "dpo" else cfg.orpo
    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(engine.trainer.args, policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = opt_cls(params, **opt_kwargs, weight_decay=cfg.weight_decay)
    warmup = (
        section.warmup_steps
        if section.warmup_steps > 0
        else math.ceil(section.warmup_ratio * steps)
    )
    scheduler = get_scheduler(
        section.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=steps
    )
    check_learning_rate_moves(
        scheduler, steps, learning_rate=section.learning_rate, warmup=f"{warmup} step(s)"
    )
    return optimizer, scheduler


# --------------------------------------------------------------------------- one iteration's parts


def regenerate_into_buffer(
    cfg: SAPOConfig,
    step: int,
    examples: list[Example],
    indices: list[int],
    generator_model,
    tokenizer,
    buffer: ReplayBuffer,
    regenerate,
    k: int = 0,
) -> dict[str, float]:
    """Cut each row's y+, regenerate B' with `generator_model`, push (x, y+, y-, cut, step) entries
    onto buffer `k` (its index seeds the cuts and the sampling)."""
    rng = step_rng(cfg.seed, step, f"cut:{k}")
    cuts: list[Cut] = []
    prefixes, budgets = [], []
    for i in indices:
        ex = examples[i]
        cut = plan_cut(
            len(ex.content_ids),
            cfg.segment_length,
            rng,
            min_tail=cfg.min_tail_tokens,
            segment=cfg.segment,
        )
        cuts.append(cut)
        prefixes.append(ex.prompt_ids + ex.content_ids[: cut.position])
        # whole-answer ablation: B' may use the whole answer budget, not only |y+|
        budgets.append(
            cut.length if cfg.segment else cfg.max_length - len(ex.prompt_ids) - len(ex.end_ids)
        )
    settings = SamplingSettings(
        n=cfg.rejected_per_prompt,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=derived_seed(cfg.seed, step, "generate", k),
        batch_size=cfg.generation_batch_size,
        stop=tuple(sorted(stop_tokens(tokenizer, examples[indices[0]].end_ids))),
    )
    generated = regenerate(generator_model, tokenizer, prefixes, budgets, settings)
    ended = adapted = 0
    for i, cut, budget, samples in zip(indices, cuts, budgets, generated, strict=True):
        ex = examples[i]
        for sample in samples:
            # whole-answer mode: C is empty, B' may be longer than y+
            effective = cut if cfg.segment else Cut(0, budget, False)
            rejected, at_eos = splice_rejected(
                ex.content_ids, effective, sample, stop=set(settings.stop), end=ex.end_ids
            )
            ended += at_eos
            adapted += cut.adapted
            buffer.push(
                BufferEntry(
                    prompt=prompt_json(ex.messages),
                    prompt_ids=ex.prompt_ids,
                    chosen_ids=ex.answer_ids,
                    rejected_ids=rejected,
                    cut=cut.position,
                    segment_tokens=cut.length,
                    segment_adapted=cut.adapted,
                    ended_at_eos=at_eos,
                    step=step,
                    entry_id=buffer.pushed,
                    chosen_text=ex.chosen_text,
                    rejected_text=tokenizer.decode(rejected, skip_special_tokens=True),
                )
            )
    n = max(1, len(indices) * cfg.rejected_per_prompt)
    return {"generation/ended_at_eos": ended / n, "generation/segment_adapted": adapted / n}


def train_step(
    cfg: SAPOConfig,
    engine: LossEngine,
    policy,
    optimizer,
    scheduler,
    draws: list[list[BufferEntry]],
    device,
) -> dict[str, float]:
    """One optimiser step on the draws of this process's buffers (one list per buffer): the loss is
    the mean over all buffers of each buffer's mean pair loss; gradients are averaged over processes."""
    import torch

    policy.train()
    sums: dict[str, float] = defaultdict(float)
    total_loss = 0.0
    for entries in draws:
        micro = cfg.micro_batch_size or len(entries)
        for start in range(0, len(entries), micro):
            chunk = entries[start : start + micro]
            # TRL's losses are means over pairs: a micro-batch weighs its share of its buffer's
            # draws, a buffer 1 / buffers (this process's part; the processes' mean does the rest)
            share = len(chunk) / len(entries) / len(draws)
            loss, metrics = loss_and_metrics(engine, policy, chunk, device)
            (loss * share).backward()
            total_loss += float(loss.detach()) * share
            for k, v in metrics.items():
                sums[k] += v * share
    average_gradients(policy.parameters())
    sums = defaultdict(float, mean_over_processes({**sums, "loss": total_loss}, device))
    total_loss = sums.pop("loss")
    if cfg.max_grad_norm > 0:
        sums["grad_norm"] = float(
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        )
    sums["learning_rate"] = float(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total_loss, **sums}


# --------------------------------------------------------------------------- the run


@dataclass
class _Models:
    policy: Any
    ema: Any
    reference: Any  # the DPO reference module (may BE `ema`), None for ORPO
    reference_is_copy: bool  # a separate module whose weights need checkpointing


def _load_models(cfg: SAPOConfig, policy_dir: str, device, trust_remote_code: bool) -> _Models:
    from sgpo.train.checkpoints import load_model

    def load():
        return load_model(policy_dir, trust_remote_code=trust_remote_code).to(device)

    policy, ema = load(), load()
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    reference, is_copy = None, False
    if cfg.loss == "dpo":
        if cfg.reference == "ema" and cfg.reference_update_every == 1:
            reference = ema
        else:  # fixed: the SFT model; policy / ema every K: a copy that starts as the SFT model
            reference = load()
            reference.eval()
            for p in reference.parameters():
                p.requires_grad_(False)
            is_copy = cfg.reference != "fixed"
    return _Models(policy, ema, reference, is_copy)


@dataclass
class _SigtermFlag:
    set: bool = False


def _install_sigterm(flag: _SigtermFlag):
    if threading.current_thread() is not threading.main_thread():
        return None  # signals only reach the main thread; the caller's own handling applies

    def handler(signum, frame):
        flag.set = True

    return signal.signal(signal.SIGTERM, handler)


def train_sapo(
    policy_dir: str,
    rows: list[tuple[list[dict[str, str]], str]],
    cfg: SAPOConfig,
    *,
    out_dir: str | Path,
    checkpoint_url: str,
    ema_out_dir: str | Path | None = None,
    storage_options: dict | None = None,
    on_metrics: MetricsCallback | None = None,
    regenerate=None,
    trust_remote_code: bool = False,
    handle_sigterm: bool = True,
) -> SAPOResult:
    """Run SAPO from the SFT checkpoint `policy_dir` on (prompt conversation, chosen answer) rows.

    Resumes from the newest complete checkpoint under `checkpoint_url` (any fsspec URL); writes
    one every `cfg.checkpoint_every` steps, at the end, and on SIGTERM (then raises
    SAPOInterrupted). The final policy (and the EMA model when `ema_out_dir` is given) is saved
    as a safetensors checkpoint with its tokenizer. `on_metrics(step, metrics)` gets a dict
    every `cfg.logging_steps` steps. `regenerate` replaces the transformers sampler (see
    generate.py for the vLLM hook).
    """

    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.checkpoints import save_checkpoint
    from sgpo.train.sapo import checkpoint as ckpt
    from sgpo.train.trainers import set_chat_template

    check_config(cfg)
    if not rows:  # before anything is loaded
        raise SAPOConfigError("rows", "the dataset is empty: SAPO needs (prompt, chosen) rows")
    procs = start_processes()
    if cfg.buffers % procs.world:
        raise SAPOConfigError(
            "buffers",
            f"{cfg.buffers} is not a multiple of the {procs.world} processes of this launch: each "
            "process holds buffers / processes replay buffers",
        )
    mine = _my_buffers(cfg.buffers, procs)
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust_remote_code)
    set_chat_template(tokenizer, None, key="model.chat_template")  # a raw base without one: say so
    tokenized = _tokenize(rows, tokenizer, cfg)
    examples = [ex for ex in tokenized if ex is not None]
    dropped = len(tokenized) - len(examples)
    if not examples:
        raise SAPOConfigError(
            "max_prompt_length",
            f"every one of the {len(rows)} prompts has {cfg.max_prompt_length} tokens or more "
            "(long_prompts: drop)",
        )
    if dropped:
        log.info(
            "SAPO: %d of %d rows dropped (prompt of %d tokens or more)",
            dropped,
            len(rows),
            cfg.max_prompt_length,
        )
    steps = total_steps(cfg, len(examples))
    regenerate = regenerate or hf_regenerate
    device = procs.device

    models = _load_models(cfg, policy_dir, device, trust_remote_code)
    work_dir = tempfile.mkdtemp(prefix="sapo-trainer-")
    engine = make_loss_engine(cfg, models.policy, models.reference, tokenizer, work_dir)
    optimizer, scheduler = make_optimizer(cfg, engine, models.policy, steps)
    buffers = {k: ReplayBuffer(capacity=cfg.buffer_capacity) for k in mine}
    state = {
        "step": 0,
        "ema_updates": 0,
        "reference_updates": 0,
        "total_steps": steps,
        "config": cfg.model_dump(mode="json"),
        "timings": {t: 0.0 for t in TIMERS},
    }

    resumed_from = None
    latest = ckpt.latest_checkpoint(checkpoint_url, storage_options)
    if latest:
        loaded = ckpt.load_checkpoint(latest, storage_options, buffer_ids=mine)
        if output_fields(loaded.state["config"]) != output_fields(cfg.model_dump(mode="json")):
            raise SAPOConfigError(
                "checkpoint_url",
                f"{latest} was written by a run with another config; use a new folder per config",
            )
        models.policy.load_state_dict(loaded.policy)
        models.ema.load_state_dict(loaded.ema)
        if models.reference_is_copy and loaded.reference is not None:
            models.reference.load_state_dict(loaded.reference)
        optimizer.load_state_dict(loaded.optimizer)
        scheduler.load_state_dict(loaded.scheduler)
        buffers = {
            k: ReplayBuffer.from_table(table, cfg.buffer_capacity)
            for k, table in loaded.buffer_tables.items()
        }
        ckpt.restore_rng(loaded.rng["meta"], loaded.rng["tensors"])
        state.update({k: loaded.state[k] for k in ("step", "ema_updates", "reference_updates")})
        resumed_from = state["step"]
        log.info("SAPO resumes from %s (step %d of %d)", latest, state["step"], steps)

    timings = {t: 0.0 for t in TIMERS}  # this process only

    def write_checkpoint() -> None:
        t0 = time.perf_counter()
        ckpt.save_checkpoint(
            checkpoint_url,
            state["step"],
            policy=models.policy,
            ema=models.ema,
            reference=models.reference if models.reference_is_copy else None,
            optimizer=optimizer,
            scheduler=scheduler,
            buffers=buffers,
            n_buffers=cfg.buffers,
            state=state,
            keep=cfg.keep_checkpoints,
            storage_options=storage_options,
            main=procs.is_main,
            barrier=barrier,
        )
        timings["checkpoint"] += time.perf_counter() - t0

    flag = _SigtermFlag()
    previous = _install_sigterm(flag) if handle_sigterm else None
    window: dict[str, list[float]] = defaultdict(list)
    window_time = {t: 0.0 for t in TIMERS}
    last_metrics: dict[str, float] = {}
    saved_at = state["step"]
    generator_model = models.ema if cfg.rejected_by == "ema" else models.policy
    try:
        while state["step"] < steps:
            step = state["step"]
            marks = dict(timings)
            t0 = time.perf_counter()
            if step % cfg.sample_every == 0:
                step_rows = rows_for_step(len(examples), cfg.pairs_per_step, cfg.seed, step)
                stats: dict[str, float] = defaultdict(float)
                for k, buffer in buffers.items():
                    part = regenerate_into_buffer(
                        cfg,
                        step,
                        examples,
                        buffer_rows(step_rows, k, cfg.batch_size),
                        generator_model,
                        tokenizer,
                        buffer,
                        regenerate,
                        k,
                    )
                    for name, v in part.items():
                        stats[name] += v / len(buffers)
                for name, v in mean_over_processes(dict(stats), device).items():
                    window[name].append(v)
            t1 = time.perf_counter()
            timings["generation"] += t1 - t0

            draws = [
                buffer.sample(cfg.batch_size, step_rng(cfg.seed, step, f"buffer:{k}"))
                for k, buffer in buffers.items()
            ]
            metrics = train_step(cfg, engine, models.policy, optimizer, scheduler, draws, device)
            state["step"] = step = step + 1
            t2 = time.perf_counter()
            timings["training"] += t2 - t1

            if ema_due(step, cfg.ema_every):
                ema_update(models.ema, models.policy, cfg.ema_alpha)
                state["ema_updates"] += 1
            if models.reference_is_copy and reference_refresh_due(
                cfg.reference, step, cfg.reference_update_every
            ):
                source = models.ema if reference_source(cfg.reference) == "ema" else models.policy
                copy_weights(source, models.reference)
                state["reference_updates"] += 1
            timings["ema"] += time.perf_counter() - t2

            for k, v in metrics.items():
                window[k].append(v)
            flag.set = any_process(flag.set, device)  # every process stops at the same step
            periodic = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
            if periodic or flag.set or step == steps:
                write_checkpoint()
                saved_at = step
            for t in TIMERS:
                window_time[t] += timings[t] - marks[t]
            state["timings"] = {
                t: state["timings"].get(t, 0.0) + timings[t] - marks[t] for t in TIMERS
            }

            if step % cfg.logging_steps == 0 or step == steps:
                last_metrics = {k: sum(v) / len(v) for k, v in window.items()}
                sizes = mean_over_processes(_buffer_stats(buffers), device)
                last_metrics.update(
                    {
                        "ema_updates": float(state["ema_updates"]),
                        "reference_updates": float(state["reference_updates"]),
                        "buffer_size": sizes["entries"] * procs.world,
                        "buffer_mean_uses": sizes["uses"] / max(sizes["entries"], 1e-12),
                        "epoch": step / math.ceil(len(examples) / cfg.pairs_per_step),
                        **{f"time/{t}_s": window_time[t] for t in TIMERS},
                    }
                )
                window.clear()
                window_time = {t: 0.0 for t in TIMERS}
                if on_metrics and procs.is_main:
                    on_metrics(step, last_metrics)
            if flag.set:
                if saved_at != step:  # SIGTERM came after this step's checkpoint decision
                    write_checkpoint()
                raise SAPOInterrupted(
                    f"SIGTERM: checkpoint written at step {step} under {checkpoint_url}"
                )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work_dir, ignore_errors=True)

    if procs.is_main:
        save_checkpoint(models.policy, tokenizer, out_dir)
        if ema_out_dir is not None:
            save_checkpoint(models.ema, tokenizer, ema_out_dir)
    sizes = mean_over_processes(_buffer_stats(buffers), device)
    return SAPOResult(
        steps=state["step"],
        ema_updates=state["ema_updates"],
        buffer_size=round(sizes["entries"] * procs.world),
        buffer_mean_uses=sizes["uses"] / max(sizes["entries"], 1e-12),
        resumed_from_step=resumed_from,
        timings=timings,
        last_metrics=last_metrics,
        prompts_dropped=dropped,
    )


def _my_buffers(n_buffers: int, procs: Processes) -> list[int]:
    """The buffers this process holds: a contiguous block of n_buffers / processes."""
    per = n_buffers // procs.world
    return list(range(procs.rank * per, (procs.rank + 1) * per))


def _buffer_stats(buffers: dict[int, ReplayBuffer]) -> dict[str, float]:
    """Entries and summed use counts of this process's buffers."""
    return {
        "entries": float(sum(len(b) for b in buffers.values())),
        "uses": float(sum(e.uses for b in buffers.values() for e in b.entries)),
    }


def output_fields(dumped: dict) -> dict:
    """The config without its runtime-only fields (those may change between a run and its resume)."""
    from sgpo.config import NOT_IN_CACHE_KEY

    runtime = {
        name
        for name, f in SAPOConfig.model_fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(NOT_IN_CACHE_KEY)
    }
    return {k: v for k, v in dumped.items() if k not in runtime}
