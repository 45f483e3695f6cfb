"""The DPO reference's log-probs of each pair's chosen and rejected answer, computed once.

The `ref_logps` stage computes them batched over length-sorted pairs, without gradients, exactly as
TRL's DPOTrainer would (its tokenisation, truncation and `compute_ref_log_probs`); the `dpo` stage
then trains with one model in memory. A variant with the same reference and pairs (another beta,
learning rate, loss) reads them from the store and pays nothing.
"""

from __future__ import annotations

import tempfile
from typing import Any

from artifacts.hashing import sha256_text
from sgpo.data.sources import conversation, is_empty_answer
from sgpo.models.tinykit import load_tokenizer
from sgpo.train.checkpoints import load_model
from sgpo.train.trainers import (
    REF_COLUMNS,
    TrainingDataError,
    dpo_trainer_class,
    pairs_dataset,
)

Pair = tuple[list[dict[str, str]], str, str]  # (prompt conversation, chosen, rejected)


def preference_pairs(rows: list[dict[str, Any]]) -> list[Pair]:
    """The pairs a DPO stage trains on: a pair whose two answers are identical carries no preference
    signal and is left out, and so is one whose chosen or rejected answer is empty (the pairs stage
    drops them already; a table from elsewhere may hold them)."""
    return [
        (conversation(r), r["chosen"], r["rejected"])
        for r in rows
        if r["chosen"] != r["rejected"]
        and not is_empty_answer(r["chosen"])
        and not is_empty_answer(r["rejected"])
    ]


def pair_hash(pair: Pair) -> str:
    """Identifies a pair's content: the reference log-prob table's rows are checked against it."""
    return sha256_text(repr(pair))[:16]


def reference_logps(model_dir: str, pairs: list[Pair], **kw: Any) -> list[tuple[float, float]]:
    """The reference model's summed log-probs of each pair's chosen and rejected answer
    (`reference_logps_and_tokens` without the token counts; same keyword arguments)."""
    return [(a, b) for a, b, _, _ in reference_logps_and_tokens(model_dir, pairs, **kw)]


def reference_logps_and_tokens(
    model_dir: str,
    pairs: list[Pair],
    *,
    max_length: int,
    batch_size: int = 8,
    bf16: bool = False,
    trust_remote_code: bool = False,
    trl_args: dict[str, Any] | None = None,
) -> list[tuple[float, float, int, int]]:
    """The reference model's summed log-probs of each pair's chosen and rejected answer, exactly as TRL's
    DPOTrainer computes them (its tokenisation, truncation and `compute_ref_log_probs`), but batched over
    length-sorted pairs, without gradients, once; with the number of answer tokens each sum covers (after
    truncation: per-token perplexities for the report). Under a launch each rank takes a share of the batches."""
    import torch
    from trl import DPOConfig

    if not pairs:
        raise TrainingDataError("no preference pairs")
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, trust_remote_code=trust_remote_code)
    use_cpu = not torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="sgpo-reflogps-") as work:
        # only what changes the log-probs: the length limit (truncation) and the precision
        args = DPOConfig(
            output_dir=work,
            max_length=max_length,
            precompute_ref_log_probs=True,
            use_cpu=use_cpu,
            bf16=bf16 and not use_cpu,
            report_to=[],
            disable_tqdm=True,
            **(trl_args or {}),  # the DPO section's other TRL arguments (e.g. ld_alpha)
        )
        # policy = the reference itself; precompute on and our no-op hook: TRL builds no second copy
        source = pairs_dataset(pairs, [(0.0, 0.0)] * len(pairs)).add_column(
            "pair_index", list(range(len(pairs)))
        )
        trainer = dpo_trainer_class()(
            model=model, args=args, train_dataset=source, processing_class=tokenizer
        )
        # tokenised and filtered the way training sees it: TRL drops pairs whose prompt fills
        # max_length (their log-probs stay NaN; training drops the same pairs)
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
                # the collator stacks chosen rows then rejected rows; its completion mask is what the
                # sums cover
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


def logps_table(pairs: list[Pair], scored: list[tuple[float, float, int, int]]) -> Any:
    """The `ref_logps` artifact: one row per pair, in the pairs' order, with its content hash."""
    import pyarrow as pa

    return pa.table(
        {
            "pair_index": list(range(len(pairs))),
            "pair_hash": [pair_hash(p) for p in pairs],
            "ref_chosen_logps": [a for a, _, _, _ in scored],
            "ref_rejected_logps": [b for _, b, _, _ in scored],
            "chosen_tokens": [n for _, _, n, _ in scored],
            "rejected_tokens": [n for _, _, _, n in scored],
        }
    )


def logps_from_table(rows: list[dict[str, Any]], pairs: list[Pair]) -> list[tuple[float, float]]:
    """The log-probs of `pairs` from a `ref_logps` table, checked row by row against the pairs."""
    if [r["pair_hash"] for r in rows] != [pair_hash(p) for p in pairs]:
        raise TrainingDataError(
            "the reference log-prob table does not match the pairs (rows differ): it was made for "
            "other pairs"
        )
    return [(r["ref_chosen_logps"], r["ref_rejected_logps"]) for r in rows]
