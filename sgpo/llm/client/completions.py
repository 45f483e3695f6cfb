"""The chat-completions wire format both callers share: request bodies, answers to records, and
why an answer is unusable."""

from __future__ import annotations

from typing import Any

from sgpo.llm.client.records import CallRecord, ChatRequest


def not_a_chat_completion(parsed: Any, content_type: str | None) -> str | None:
    """Why a 2xx response is not a chat completion (None if it is one).

    The openai client returns the body as a plain str when the server does not say JSON (an HTML
    page), and builds the model without validation when it does, so both are checked here."""
    ctype = (content_type or "no content type").split(";")[0].strip() or "no content type"
    if isinstance(parsed, (str, bytes)) or "json" not in ctype:
        return ctype
    if not isinstance(getattr(parsed, "choices", None), list):
        return f"{ctype} without a 'choices' list"
    return None


def request_body(model: str, req: ChatRequest, seed: int | None) -> dict[str, Any]:
    """The chat-completions body of one ask (the same in sync calls and in batch input lines)."""
    body: dict[str, Any] = dict(
        model=model,
        messages=req.messages,
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens,
    )
    if seed is not None:
        body["seed"] = seed
    if req.top_logprobs is not None:
        body.update(logprobs=True, top_logprobs=req.top_logprobs)
    return body


def unusable_reason(completion: Any, allow_truncated: bool) -> str | None:
    """Why an answer is unusable whatever the caller wants (None: usable)."""
    choice = completion.choices[0] if completion.choices else None
    if choice is None:
        return "no_choices"
    if getattr(choice.message, "refusal", None):
        return "refused"
    if choice.finish_reason == "content_filter":
        return "content_filter"
    if not (choice.message.content or "").strip():
        return "empty"
    if choice.finish_reason == "length" and not allow_truncated:
        return "truncated"
    return None


def answer_record(
    req: ChatRequest,
    request_hash: str,
    completion: Any,
    raw_text: str | None,
    *,
    prior: tuple[int, int],
    attempts: int,
    answers: int,
    default_model: str,
    batch: bool = False,
) -> CallRecord:
    """The "ok" record of one answer; `prior` = (prompt, completion) tokens billed for earlier answers."""
    usage = completion.usage
    choice = completion.choices[0] if completion.choices else None
    top = None
    if choice is not None and choice.logprobs is not None and choice.logprobs.content is not None:
        top = [
            {
                "token": t.token,
                "logprob": t.logprob,
                "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in t.top_logprobs],
            }
            for t in choice.logprobs.content
        ]
    return CallRecord(
        request_hash=request_hash,
        key=req.key,
        status="ok",
        reason=None,
        text=choice.message.content if choice else None,
        finish_reason=choice.finish_reason if choice else None,
        prompt_tokens=prior[0] + (usage.prompt_tokens if usage else 0),
        completion_tokens=prior[1] + (usage.completion_tokens if usage else 0),
        top_logprobs=top,
        attempts=attempts,
        answers=answers,
        model=completion.model or default_model,
        raw_response=raw_text,
        batch=batch,
    )
