"""transformers back-end: batched `generate` with left padding (CPU tests, small runs).

Seeding: sample k of prompt i draws its tokens from a generator of its own, seeded
`sampling.seed + i * n + k` (the rule of the vLLM and OpenAI back-ends, `sgpo.generate.vllm.sample_seed`),
so a sample does not depend on which prompts share its batch: `sampling.batch_size` changes how
fast, not what is sampled. (HF's own sampling draws every row from one global stream, so the
samples depended on the batch size.) Temperature and top-p are applied as HF's warpers apply them;
the per-row draw is a logits processor that leaves greedy search a single choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sgpo.generate.contract import Generation

if TYPE_CHECKING:
    from sgpo.config import SamplingConfig


def end_of_sequence_ids(tokenizer, generation_config) -> list[int]:
    """Where an answer ends: the tokenizer's EOS and every EOS the checkpoint's generation config names
    (an instruct model may end a turn with a token the tokenizer does not call EOS, e.g. Qwen2.5's
    generation_config [<|im_end|>, <|endoftext|>]; SmolLM2: <|im_end|> in both)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(i) for i in value)
    if not ids:
        raise ValueError(
            "neither the tokenizer nor the generation config names an end-of-sequence token"
        )
    return sorted(ids)


class PerRowSampler:
    """A logits processor that samples each row's next token with the row's own generator
    (temperature, then nucleus top-p as HF's TopPLogitsWarper keeps it) and returns scores that let
    greedy search pick exactly that token."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, *, device: str):
        import torch

        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - self.top_p)
            drop[..., -1:] = False  # keep at least the most likely token
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        probs = logits.softmax(dim=-1)
        chosen = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            token = torch.multinomial(probs[row], 1, generator=generator)
            chosen[row, token] = 0.0
        return chosen


class TransformersGenerator:
    def __init__(
        self, model_dir: str, *, trust_remote_code: bool = False, device: str | None = None
    ):
        import torch
        from transformers import AutoModelForCausalLM

        from sgpo.models.tinykit import load_tokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt directly
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.model.to(self.device).eval()
        self.eos_ids = end_of_sequence_ids(self.tokenizer, self.model.generation_config)

    def generate(
        self, conversations: list[list[dict[str, str]]], params: SamplingConfig
    ) -> list[list[Generation]]:
        import torch

        tok = self.tokenizer
        prompts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        out: list[list[Generation]] = [[] for _ in prompts]
        eos = self.eos_ids
        for start in range(0, len(prompts), params.batch_size):
            batch = prompts[start : start + params.batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(
                self.device
            )
            processors = []
            if params.temperature > 0:  # rows are (prompt start + j // n, sample j % n)
                seeds = [
                    params.seed + (start + j // params.n) * params.n + j % params.n
                    for j in range(len(batch) * params.n)
                ]
                processors.append(
                    PerRowSampler(seeds, params.temperature, params.top_p, device=self.device)
                )
            # each prompt n times in a row (greedy search returns one sequence per input row)
            enc = {k: v.repeat_interleave(params.n, dim=0) for k, v in enc.items()}
            with torch.no_grad():
                ids = self.model.generate(
                    **enc,
                    do_sample=False,  # greedy over the processor's one choice per row
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    logits_processor=processors,
                    max_new_tokens=params.max_new_tokens,
                    num_beams=1,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            for j, row in enumerate(new.tolist()):
                n_tok = len(row)
                finish = "length"
                end = next((i for i, t in enumerate(row) if t in eos), None)
                if end is not None:  # the answer ends at its first end-of-sequence token
                    n_tok = end + 1
                    finish = "stop"
                text = tok.decode(row[:n_tok], skip_special_tokens=True).strip()
                out[start + j // params.n].append(
                    Generation(text=text, finish_reason=finish, completion_tokens=n_tok)
                )
        return out

    def close(self) -> None:
        del self.model
