"""transformers back-end: batched `generate` with left padding (CPU tests, small runs)."""

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
            # One seed per batch start: the same config gives the same samples whatever ran before.
            torch.manual_seed(params.seed + start)
            sample = params.temperature > 0
            with torch.no_grad():
                ids = self.model.generate(
                    **enc,
                    do_sample=sample,
                    temperature=params.temperature if sample else None,
                    top_p=params.top_p if sample else None,
                    top_k=0 if sample else None,
                    max_new_tokens=params.max_new_tokens,
                    num_return_sequences=params.n,
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
