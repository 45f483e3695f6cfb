"""In-process vLLM back-end (GPU workers): one `LLM.chat` call over the whole batch.

vLLM is an optional extra (`pip install sgpo[vllm]`); importing this module without it fails
only when the back-end is chosen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sgpo.generation import Generation

if TYPE_CHECKING:
    from sgpo.config import SamplingConfig


class VLLMGenerator:
    def __init__(self, model_dir: str, *, trust_remote_code: bool = False, **engine_kwargs: Any):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the worker image
            raise RuntimeError("sampling.backend=vllm needs the vllm package (pip install 'sgpo[vllm]')") from e
        self.llm = LLM(model=model_dir, trust_remote_code=trust_remote_code, **engine_kwargs)

    def generate(self, conversations: list[list[dict[str, str]]], params: "SamplingConfig") -> list[list[Generation]]:
        from vllm import SamplingParams

        sp = SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, seed=params.seed,
        )
        results = self.llm.chat(conversations, sp, use_tqdm=False)
        return [
            [Generation(o.text.strip(), o.finish_reason or "stop", len(o.token_ids)) for o in r.outputs]
            for r in results
        ]

    def close(self) -> None:
        del self.llm
