"""OpenAI-compatible server back-end (a `vllm serve` of the checkpoint, or any hosted model).

Unpaid, regenerable calls: bounded concurrency, no journal. Paid calls go through
sgpo.llm.client instead.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sgpo.generate.contract import Generation

if TYPE_CHECKING:
    from sgpo.config import SamplingConfig


class OpenAIServerGenerator:
    def __init__(
        self, base_url: str, *, model: str, api_key: str = "EMPTY", max_concurrency: int = 32
    ):
        self.base_url, self.model, self.api_key, self.max_concurrency = (
            base_url,
            model,
            api_key,
            max_concurrency,
        )

    def generate(
        self, conversations: list[list[dict[str, str]]], params: SamplingConfig
    ) -> list[list[Generation]]:
        return asyncio.run(self._generate(conversations, params))

    async def _generate(self, conversations, params):
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=5)
        sem = asyncio.Semaphore(self.max_concurrency)

        async def one(i: int, conv, k: int) -> Generation:
            async with sem:
                r = await client.chat.completions.create(
                    model=self.model,
                    messages=conv,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_new_tokens,
                    seed=params.seed + i * params.n + k,
                )
            c = r.choices[0]
            # stripped like the in-process back-ends' text (one contract: tests/integration/generate/test_generation_contract.py)
            finish = "length" if c.finish_reason == "length" else "stop"
            return Generation(
                (c.message.content or "").strip(),
                finish,
                r.usage.completion_tokens if r.usage else 0,
            )

        try:
            flat = await asyncio.gather(
                *(one(i, c, k) for i, c in enumerate(conversations) for k in range(params.n))
            )
        finally:
            await client.close()
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(conversations))]

    def close(self) -> None:
        pass
