"""A causal LM from a local folder, served with `transformers.generate` (torch imported lazily)."""

from __future__ import annotations

import atexit
import threading
import weakref
from pathlib import Path
from typing import Any

from sgpo.llm.server.backend import BackendClosed, ChatResult, FinishReason

# Every open backend, closed at interpreter exit: a generation still running in a server's worker
# thread when the interpreter finalises aborts the process (libtorch's static destructors run under
# it: "terminate called without an active exception", SIGABRT, exit status 134).
_OPEN: weakref.WeakSet[TransformersChatBackend] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for backend in list(_OPEN):
        backend.close()


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level BPE alphabet: each byte is shown as one printable character. Inverting
    # it recovers a token's exact bytes, which `decode` cannot for a split UTF-8 character.
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


class TransformersChatBackend:
    """A causal LM served with `transformers.generate`, one request at a time.

    Determinism: with a `seed`, the torch RNG is seeded right before `generate` under the same
    lock that serialises generation, so an equal request gives an equal answer whatever else the
    server is doing. (Global seeding is fine here: the model is the process's only RNG user.)

    Log-probabilities come from the *raw* logits (`output_logits`), log-softmaxed: the model's own
    next-token distribution at temperature 1, independent of temperature/top-p. The processed
    scores would give -inf to every token that top-p cut, which is useless to a judge reading
    P("m") vs P("M"); the raw distribution is also what the policy's likelihoods are computed on.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", *, dtype: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from sgpo.generate.hf import end_of_sequence_ids
        from sgpo.models.tinykit import load_tokenizer

        self.model_dir = str(model_dir)
        self.device = device
        self.tokenizer = load_tokenizer(self.model_dir)
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.model = (
            AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch_dtype)
            .to(device)
            .eval()
        )
        try:
            self.eos_ids = end_of_sequence_ids(self.tokenizer, self.model.generation_config)
        except ValueError as e:
            raise ValueError(f"{self.model_dir}: {e}") from None
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.eos_ids[0]
        )
        self._lock = threading.Lock()  # one model, one generate() at a time
        self._closed = threading.Event()
        _OPEN.add(self)

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop: a generation under way ends at its next token (and its request gets no answer), later
        requests are refused, and this returns once no thread is inside the model. Call it before the
        server stops and before the interpreter exits (done at exit for every open backend)."""
        self._closed.set()
        if self._lock.acquire(timeout=timeout_s):
            self._lock.release()

    def _stopping_criteria(self) -> Any:
        from transformers import StoppingCriteria, StoppingCriteriaList

        closed = self._closed

        class UntilClosed(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                import torch

                return torch.full(
                    (input_ids.shape[0],),
                    closed.is_set(),
                    dtype=torch.bool,
                    device=input_ids.device,
                )

        return StoppingCriteriaList([UntilClosed()])

    def _token_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.tokenizer.decode([token_id])
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece and all(ch in _BYTE_DECODER for ch in piece):
            raw = bytes(_BYTE_DECODER[ch] for ch in piece)
        else:
            raw = text.encode("utf-8")
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        top_logprobs: int | None,
        stop: list[str] | None,
    ) -> ChatResult:
        import torch

        prompt = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        n_prompt = int(enc["input_ids"].shape[1])
        sample = temperature > 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_tokens,
            do_sample=sample,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=top_logprobs is not None,
        )
        if sample:
            # OpenAI has no top-k: top_k=0 keeps the checkpoint's default (often 50) from applying
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode():
            if self._closed.is_set():
                raise BackendClosed(f"{self.model_dir}: the backend is closed")
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**enc, **kwargs, stopping_criteria=self._stopping_criteria())
            if self._closed.is_set():  # cut short by close(): not an answer
                raise BackendClosed(f"{self.model_dir}: closed while generating")
        new_ids = out.sequences[0, n_prompt:].tolist()
        # generate pads nothing for a single sequence, but strip defensively; stop at the first eos.
        ended = False
        content_ids: list[int] = []
        for t in new_ids:
            if t in self.eos_ids:
                ended = True
                break
            content_ids.append(t)
        n_generated = len(content_ids) + (1 if ended else 0)
        text = self.tokenizer.decode(content_ids, skip_special_tokens=True)
        finish: FinishReason = "stop" if ended else "length"

        logprobs: list[dict[str, Any]] | None = None
        if top_logprobs is not None:
            logprobs = []
            for step, t in enumerate(content_ids):
                logp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                entry = self._token_entry(t, float(logp[t]))
                tops = []
                if top_logprobs > 0:
                    vals, idx = torch.topk(logp, k=min(top_logprobs, logp.shape[-1]))
                    tops = [
                        self._token_entry(int(i), float(v))
                        for v, i in zip(vals.tolist(), idx.tolist())
                    ]
                entry["top_logprobs"] = tops
                logprobs.append(entry)

        if stop:
            cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                if logprobs is not None:
                    # keep the tokens whose decoded prefix still lies within the kept text
                    keep = 0
                    while (
                        keep < len(content_ids)
                        and len(
                            self.tokenizer.decode(content_ids[: keep + 1], skip_special_tokens=True)
                        )
                        <= cut
                    ):
                        keep += 1
                    logprobs = logprobs[:keep]
        return ChatResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=n_prompt,
            completion_tokens=n_generated,
            logprobs=logprobs,
        )
