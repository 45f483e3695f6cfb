"""Generation back-ends behind one contract.

`Generator.generate(conversations, params)` takes chat conversations (lists of
{role, content}) and returns, per conversation, `params.n` `Generation`s in order. Back-ends:
  transformers  in-process HF generate; CPU tests and small runs    (sgpo.generate.hf)
  vllm          in-process vllm.LLM batch generation on a GPU worker (sgpo.generate.vllm)
  vllm_server   vLLM's OpenAI server, started for the checkpoint (or at base_url) (sgpo.generate.vllm)
  openai        any OpenAI-compatible server, e.g. `vllm serve`      (sgpo.generate.openai_server)
All apply the model's own chat template and honour temperature, top_p, max_new_tokens, n, seed.
The contract (tests/integration/generate/test_generation_contract.py runs it against every available back-end):
n generations per conversation, in order; finish_reason "stop" or "length";
completion_tokens <= max_new_tokens (the end-of-sequence token counted); text without the
template's special tokens; sample k of prompt i is seeded `seed + i*n + k` on every back-end
(openai: over a seeded server), so the same seeded request gives the same text whatever the batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from sgpo.config import SamplingConfig
from sgpo.generate.contract import ChatTemplateMissing, Generation, Generator, require_chat_template

__all__ = [
    "ChatTemplateMissing",
    "Generation",
    "Generator",
    "SharedGenerators",
    "active_shared_generators",
    "answer_each",
    "open_generator",
    "require_chat_template",
    "shared_generators",
]


def open_generator(
    model_dir: str, params: SamplingConfig, *, trust_remote_code: bool = False
) -> Generator:
    """The back-end named by `params.backend`, loaded for the checkpoint in `model_dir`; inside
    `shared_generators()` the one already open for the same load settings (its close() a no-op)."""
    pool = _SHARED
    if pool is not None and params.backend in SHARED_LOAD_FIELDS:
        return pool.get(model_dir, params, trust_remote_code=trust_remote_code)
    return _open(model_dir, params, trust_remote_code=trust_remote_code)


def _open(model_dir: str, params: SamplingConfig, *, trust_remote_code: bool = False) -> Generator:
    if params.backend in ("transformers", "vllm") or (
        params.backend == "vllm_server" and not params.base_url
    ):
        require_chat_template(model_dir)
    if params.backend == "transformers":
        from sgpo.generate.hf import TransformersGenerator

        return TransformersGenerator(model_dir, trust_remote_code=trust_remote_code)
    if params.backend == "vllm":
        from sgpo.generate.vllm import VLLMGenerator

        return VLLMGenerator(model_dir, trust_remote_code=trust_remote_code, params=params)
    if params.backend == "vllm_server":
        from sgpo.generate.vllm import VLLMServerGenerator

        return VLLMServerGenerator(model_dir, params, trust_remote_code=trust_remote_code)
    if params.backend == "openai":
        from sgpo.generate.openai_server import OpenAIServerGenerator

        if not params.base_url:
            raise ValueError(
                "sampling.backend=openai needs sampling.base_url (the server serving this checkpoint)"
            )
        return OpenAIServerGenerator(
            params.base_url,
            model=params.served_model_name or model_dir,
            max_concurrency=params.max_concurrency,
        )
    raise ValueError(f"unknown generation backend {params.backend!r}")


def answer_each(
    model_dir: str,
    instructions: list[str],
    params: SamplingConfig,
    *,
    trust_remote_code: bool = False,
) -> list[Generation]:
    """One answer per instruction (a single user turn in the model's chat template), `params.n` ignored."""
    one = params.model_copy(update={"n": 1})
    gen = open_generator(model_dir, one, trust_remote_code=trust_remote_code)
    try:
        return [
            g[0]
            for g in gen.generate([[{"role": "user", "content": x}] for x in instructions], one)
        ]
    finally:
        gen.close()


# ---------------------------------------------------------------------------------------------------
# One loaded model for every benchmark of one checkpoint (the evaluation flow)
# ---------------------------------------------------------------------------------------------------
# Per back-end, the SamplingConfig fields its constructor reads: two requests that agree on these (and on
# the checkpoint and trust_remote_code) get the same loaded generator. Per-request settings (temperature,
# top_p, max_new_tokens, n, batch_size; vLLM's per-request seeds) are passed to generate() and stay
# the caller's. `openai` loads nothing here and is not shared. The transformers dtype follows the device
# (bfloat16 on CUDA, float32 on CPU), the same for every request in one process.
SHARED_LOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "transformers": (),
    "vllm": (
        "vllm_dtype",
        "vllm_enforce_eager",
        "seed",
        "vllm_tensor_parallel_size",
        "vllm_max_model_len",
        "vllm_gpu_memory_utilization",
    ),
    "vllm_server": (
        "base_url",
        "served_model_name",
        "max_concurrency",
        "vllm_python",
        "vllm_dtype",
        "vllm_max_model_len",
        "vllm_enforce_eager",
        "vllm_gpu_memory_utilization",
        "vllm_tensor_parallel_size",
        "vllm_data_parallel_size",
        "vllm_extra_args",
        "vllm_env",
        "server_startup_timeout_s",
        "seed",
    ),
}


class _Borrowed:
    """A shared generator as its caller sees it: generate() goes through, close() leaves it open."""

    def __init__(self, inner: Any):
        self.inner = inner

    def generate(
        self, conversations: list[list[dict[str, str]]], params: SamplingConfig
    ) -> list[list[Generation]]:
        return self.inner.generate(conversations, params)

    def close(self) -> None:  # the pool closes it when the flow ends
        pass


class SharedGenerators:
    """Open generators keyed by (checkpoint, back-end, trust_remote_code, the back-end's load settings).

    `loads` counts the generators really opened. Closed (each generator once) by `close()`."""

    def __init__(self) -> None:
        self._open: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.loads = 0

    @staticmethod
    def key(model_dir: str, params: SamplingConfig, trust_remote_code: bool) -> tuple:
        import json

        fields = {f: getattr(params, f) for f in SHARED_LOAD_FIELDS[params.backend]}
        return (
            str(model_dir),
            params.backend,
            bool(trust_remote_code),
            json.dumps(fields, sort_keys=True, default=str),
        )

    def get(
        self, model_dir: str, params: SamplingConfig, *, trust_remote_code: bool = False
    ) -> Generator:
        key = self.key(model_dir, params, trust_remote_code)
        with self._lock:
            if key not in self._open:
                self._open[key] = _open(model_dir, params, trust_remote_code=trust_remote_code)
                self.loads += 1
            return _Borrowed(self._open[key])

    def find(self, model_dir: str, backend: str, *, trust_remote_code: bool = False) -> Any | None:
        """The open generator of `backend` for the checkpoint (any load settings), if one is open."""
        with self._lock:
            for (d, b, trc, _), gen in self._open.items():
                if d == str(model_dir) and b == backend and trc == bool(trust_remote_code):
                    return gen
        return None

    def close(self) -> None:
        with self._lock:
            gens, self._open = list(self._open.values()), {}
        for gen in gens:
            gen.close()


_SHARED: SharedGenerators | None = None


def active_shared_generators() -> SharedGenerators | None:
    """The pool of `shared_generators()` in effect in this process, if any."""
    return _SHARED


@contextlib.contextmanager
def shared_generators() -> Iterator[SharedGenerators]:
    """While open, `open_generator` (and so `answer_each`) hands every caller in this process the one
    generator already loaded for the same checkpoint and load settings, and `sgpo.evals.lm_harness.load_lm`
    (HF back-end) wraps that generator's model instead of loading its own; all are closed on exit.
    Nested uses share the outer pool. Outside it (e.g. `python -m tasks.<stage>`) each call loads."""
    global _SHARED
    if _SHARED is not None:
        yield _SHARED
        return
    pool = _SHARED = SharedGenerators()
    try:
        yield pool
    finally:
        _SHARED = None
        pool.close()
