"""Versioned prompt templates.

Each prompt is a file `NAME.txt` in this folder with `{field}` placeholders. Its version is
`NAME@<sha256 of the text, 12 hex>`, so editing a prompt's text, not only renaming it,
changes the cache key of every stage that uses it. New wording should get a new file
(`..._v2.txt`) so old runs stay reproducible.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from artifacts.hashing import sha256_text

PROMPT_DIR = Path(__file__).resolve().parent


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def version(self) -> str:
        return f"{self.name}@{sha256_text(self.text)[:12]}"

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(f for _, f, _, _ in string.Formatter().parse(self.text) if f)

    def render(self, **values: str) -> str:
        missing = self.fields - values.keys()
        extra = values.keys() - self.fields
        if missing or extra:
            raise PromptError(
                f"prompt {self.name!r} needs fields {sorted(self.fields)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        # str.format parses only the template: braces inside the values are kept as they are.
        return self.text.format(**values).strip()


@cache
def load_prompt(name: str) -> Prompt:
    path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise PromptError(f"unknown prompt {name!r}; available: {known}")
    return Prompt(name=name, text=path.read_text())
