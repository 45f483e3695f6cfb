"""Derive the bundled tiny-preset data from the self-instruct corpora (Apache-2.0).

Run once by a maintainer (the output is committed under sgpo/data/bundled/tiny/):
    python scripts/make_tiny_data.py ../shared/data/corpora

Each split imitates the shape of the hub dataset it stands in for, so the tiny preset runs
the same loading and column-normalising code as the paper presets:
  sft.jsonl       UltraChat-200k style   {"prompt", "messages": [user, assistant]}
  improver.jsonl  dpo-mix-7k style       {"chosen": [user, assistant], "rejected": [...]}
  po.jsonl        UltraFeedback-cleaned  {"prompt", "messages": [user, assistant]}
  eval.jsonl      AlpacaEval style       {"instruction", "output", "dataset"}
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

MAX_CHARS = 420  # keeps prompt + response inside the tiny model's 384-token window


def _examples(corpora: Path) -> list[tuple[str, str]]:
    rows = []
    for name in ("self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented.jsonl"):
        for line in (corpora / name).read_text().splitlines():
            task = json.loads(line)
            inst = task["instances"][0]
            prompt = task["instruction"].strip()
            if inst["input"].strip():
                prompt += "\n\n" + inst["input"].strip()
            response = inst["output"].strip()
            if response and len(prompt) + len(response) <= MAX_CHARS:
                rows.append((prompt, response))
    return rows


def _chat(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def main(corpora: Path, out: Path) -> None:
    rows = _examples(corpora)
    random.Random(0).shuffle(rows)
    splits = {"eval": rows[:16], "improver": rows[16:48], "po": rows[48:80], "sft": rows[80:]}
    out.mkdir(parents=True, exist_ok=True)
    writers = {
        "sft": lambda p, r, i: {"prompt": p, "prompt_id": f"sft-{i}", "messages": _chat(p, r)},
        "improver": lambda p, r, i: {
            "dataset": "self-instruct",
            "chosen": _chat(p, r),
            "rejected": _chat(p, "I am not sure."),
        },
        "po": lambda p, r, i: {"prompt": p, "prompt_id": f"po-{i}", "messages": _chat(p, r)},
        "eval": lambda p, r, i: {
            "dataset": "self-instruct",
            "instruction": p,
            "output": r,
            "generator": "self-instruct-reference",
        },
    }
    for split, items in splits.items():
        with open(out / f"{split}.jsonl", "w") as f:
            for i, (p, r) in enumerate(items):
                f.write(json.dumps(writers[split](p, r, i), ensure_ascii=False) + "\n")
        print(split, len(items))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "sgpo" / "data" / "tiny")
