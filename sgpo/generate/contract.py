"""The generation contract every back-end honours (sgpo.generate): what a Generator takes and returns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sgpo.config import SamplingConfig


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    completion_tokens: int


class Generator(Protocol):
    def generate(
        self, conversations: list[list[dict[str, str]]], params: SamplingConfig
    ) -> list[list[Generation]]: ...

    def close(self) -> None: ...


class ChatTemplateMissing(ValueError):
    """A local checkpoint without a chat template: chat prompts cannot be rendered for it."""


def require_chat_template(model_dir: str) -> None:
    """Fail early, naming the fix, when a local checkpoint has no chat template (hub ids are not checked)."""
    path = Path(model_dir)
    if not path.is_dir():
        return
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return
    config = path / "tokenizer_config.json"
    try:
        if config.is_file() and json.loads(config.read_text()).get("chat_template"):
            return
    except (OSError, ValueError):
        return  # an unreadable config: let the tokenizer say what is wrong
    raise ChatTemplateMissing(
        f"{model_dir} has no chat template (no chat_template.jinja, chat_template.json, nor chat_template in "
        "tokenizer_config.json), and the evaluation prompts are chat turns. Fix: save the chat template of the model "
        "it was trained from into the checkpoint (tok = AutoTokenizer.from_pretrained(DIR); tok.chat_template = "
        "AutoTokenizer.from_pretrained(BASE_MODEL).chat_template; tok.save_pretrained(DIR)), or evaluate a checkpoint "
        "that has one"
    )
