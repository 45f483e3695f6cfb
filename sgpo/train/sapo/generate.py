"""Segment regeneration: B' ~ model(. | x + A), batched.

A regenerator is any callable
    regenerate(model, tokenizer, prefixes, max_new_tokens, settings) -> list[list[list[int]]]
taking token-id prefixes (prompt + A) and each prefix's |B|, and returning, per prefix,
`settings.n` lists of new token ids (at most its |B|; generation stops at a token of
`settings.stop` (EOS, the end-of-turn token), which is kept). `train_sapo` takes
one as `regenerate=` and defaults to `hf_regenerate` (transformers `generate`, left padding),
which is what CPU runs and tests use.

vLLM hook (not implemented): a vLLM regenerator would keep an engine alive across steps, load
the EMA weights into it after every EMA update (e.g. `llm.llm_engine.model_executor` weight
loading from the EMA state dict, or a sleep/wake + `load_weights` cycle), and submit
`TokensPrompt(prompt_token_ids=prefix)` with `SamplingParams(n, temperature, top_p, top_k,
max_tokens=|B|, seed=settings.seed)`. Its output has the same shape, so nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingSettings:
    n: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    batch_size: int
    stop: tuple[int, ...] = ()  # token ids that end B' (default: the tokenizer's EOS)


def hf_regenerate(
    model,
    tokenizer,
    prefixes: list[list[int]],
    max_new_tokens: list[int],
    settings: SamplingSettings,
) -> list[list[list[int]]]:
    """Batched `generate` with left padding; one seed per batch (seed + batch start), so the same
    inputs give the same samples whatever ran before."""
    import torch

    device = next(model.parameters()).device
    stop, pad = list(settings.stop or (tokenizer.eos_token_id,)), tokenizer.pad_token_id
    sample = settings.temperature > 0
    out: list[list[list[int]]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prefixes), settings.batch_size):
            chunk = prefixes[start : start + settings.batch_size]
            budget = max_new_tokens[start : start + settings.batch_size]
            width = max(len(p) for p in chunk)
            # left padding: every prefix ends where generation starts
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device
            )
            torch.manual_seed(settings.seed + start)
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=sample,
                    temperature=settings.temperature if sample else None,
                    top_p=settings.top_p if sample else None,
                    top_k=settings.top_k if sample else None,
                    max_new_tokens=max(budget),
                    num_return_sequences=settings.n,
                    eos_token_id=stop,
                    pad_token_id=pad,
                )
            new = gen[:, width:].tolist()
            for i, limit in enumerate(budget):
                rows = []
                for row in new[i * settings.n : (i + 1) * settings.n]:
                    row = row[:limit]
                    at = next((i for i, t in enumerate(row) if t in stop), None)
                    if at is not None:
                        row = row[: at + 1]
                    rows.append(row)
                out.append(rows)
    finally:
        model.train(was_training)
    return out
