"""Stage 4, `ppl_filter`: perplexity of each y_imp and y_ext under pi_sft; drop Tukey outliers.

Perplexity is conditional on the instruction: exp(mean token NLL of the response's tokens)
after the chat-formatted prompt, as pi_sft would generate it: the row's whole conversation (system
prompt, earlier turns, final user message), the context the policy answered in. Fences are computed per response
type (imp, ext): keep ppl in [Q1 - k IQR, Q3 + k IQR], quartiles by linear interpolation
(numpy's default). Output: one row per candidate target with `ppl` and `kept`, so the paper's
Fig. 5 histograms can be drawn from the artifact; the fences and counts are in its summary.
"""

from __future__ import annotations

from collections.abc import Sequence

from artifacts.refs import ArtifactRef
from sgpo.config import PplFilterStageConfig
from sgpo.core import Job, stage, stage_main
from sgpo.data.sources import conversation

RESPONSE_TYPES = ("imp", "ext")


def tukey_fences(values: Sequence[float], k: float = 1.5) -> dict[str, float]:
    import numpy as np

    if len(values) == 0:
        raise ValueError("no values to compute fences on")
    q1, q3 = (float(x) for x in np.percentile(np.asarray(values, dtype=float), [25, 75]))
    iqr = q3 - q1
    return {"q1": q1, "q3": q3, "iqr": iqr, "low": q1 - k * iqr, "high": q3 + k * iqr}


def response_perplexities(
    model_dir: str,
    prompts: list[str | list[dict[str, str]]],
    responses: list[str],
    *,
    batch_size: int,
    max_length: int,
    trust_remote_code: bool = False,
) -> list[float]:
    """exp(mean NLL over the response tokens | chat-formatted prompt), one per pair (in their order),
    computed in length-sorted batches of `batch_size` without gradients. A prompt is a user message
    or a whole conversation (a list of {role, content} ending with the user turn)."""
    import math

    import torch

    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.checkpoints import load_model

    tok = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, trust_remote_code=trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    # logits = lm_head(decoder(x)) holds for most causal LMs; models that scale or cap their logits
    # (Gemma-2's softcapping, Cohere's logit_scale) take the full forward
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    scaled = any(
        getattr(model.config, a, None) not in (None, 1.0)
        for a in ("final_logit_softcapping", "logit_scale")
    )
    heads_only = decoder is not None and head is not None and not scaled
    seqs: list[list[int]] = []
    n_resps: list[int] = []
    for p, r in zip(prompts, responses):
        chat = [{"role": "user", "content": p}] if isinstance(p, str) else p
        prefix = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prefix, add_special_tokens=False).input_ids
        r_ids = tok(r + tok.eos_token, add_special_tokens=False).input_ids
        seq = (p_ids + r_ids)[-max_length:]  # keep the response; cut the prompt's head if too long
        seqs.append(seq)
        n_resps.append(min(len(r_ids), len(seq) - 1))
    # length-sorted batches (longest first): little padding, and an out-of-memory batch shows at once
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: list[float] = [float("nan")] * len(seqs)
    pad = tok.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = [seqs[i] + [pad] * (width - len(seqs[i])) for i in idx]
        labels = [
            [-100] * (len(seqs[i]) - n_resps[i])
            + seqs[i][len(seqs[i]) - n_resps[i] :]
            + [-100] * (width - len(seqs[i]))
            for i in idx
        ]
        input_ids = torch.tensor(ids, device=device)
        attn = torch.tensor(
            [[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in idx], device=device
        )
        lab = torch.tensor(labels, device=device)
        target = lab[:, 1:]
        mask = target != -100
        with torch.no_grad():
            if (
                heads_only
            ):  # the LM head only where a response token is predicted: no prompt/padding logits
                hidden = decoder(
                    input_ids=input_ids, attention_mask=attn, use_cache=False
                ).last_hidden_state[:, :-1]
                logp = torch.log_softmax(head(hidden[mask]).float(), dim=-1)
            else:
                logits = model(
                    input_ids=input_ids, attention_mask=attn, use_cache=False
                ).logits.float()
                logp = torch.log_softmax(logits[:, :-1][mask], dim=-1)
            nll = -logp.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1)
            rows = torch.arange(len(idx), device=device).unsqueeze(1).expand_as(mask)[mask]
            sums = torch.zeros(len(idx), device=device, dtype=nll.dtype).index_add_(0, rows, nll)
        counts = mask.sum(dim=1)
        for i, total, count in zip(idx, sums.tolist(), counts.tolist()):
            out[i] = math.exp(total / count)
    return out


@stage(
    "ppl_filter",
    section="ppl_filter",
    code_version="2",  # 2: perplexity given the row's whole conversation; `messages` kept
    gpu=True,
    description="perplexity of y_imp / y_ext under pi_sft; drop Tukey IQR outliers per response type",
)
def ppl_filter(
    job: Job, policy: ArtifactRef, annotations: ArtifactRef, cfg: PplFilterStageConfig
) -> ArtifactRef:
    import pyarrow as pa

    rows = job.read_rows(annotations)
    candidates = [
        {
            "prompt_id": r["prompt_id"],
            "prompt": r["prompt"],
            "messages": r.get("messages"),
            "reference": r["reference"],
            "policy": r["policy"],
            "target": r[t],
            "target_type": t,
        }
        for r in rows
        for t in RESPONSE_TYPES
        if r.get(t)
    ]
    if not candidates:
        raise ValueError(
            f"{annotations.uri}: no usable improved or external responses to filter (all calls invalid?)"
        )
    ppl = response_perplexities(
        job.model_dir(policy),
        [conversation(c) for c in candidates],
        [c["target"] for c in candidates],
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        trust_remote_code=job.ctx.trust_remote_code,
    )
    summary: dict = {}
    for t in RESPONSE_TYPES:
        idx = [i for i, c in enumerate(candidates) if c["target_type"] == t]
        if not idx:
            continue
        fences = tukey_fences([ppl[i] for i in idx], cfg.iqr_k)
        kept = 0
        for i in idx:
            candidates[i]["ppl"] = ppl[i]
            candidates[i]["kept"] = fences["low"] <= ppl[i] <= fences["high"]
            kept += candidates[i]["kept"]
        summary[t] = {**fences, "total": len(idx), "kept": kept, "dropped": len(idx) - kept}
        job.log.info(
            "ppl filter %s: kept %d of %d (fences %.3g..%.3g)",
            t,
            kept,
            len(idx),
            fences["low"],
            fences["high"],
        )
    job.log_metrics({f"{t}.{k}": v for t, s in summary.items() for k, v in s.items()})
    return job.publish_table(
        pa.Table.from_pylist(candidates), summary=summary, extra={"fences": summary}
    )


if __name__ == "__main__":
    raise SystemExit(stage_main(ppl_filter))
