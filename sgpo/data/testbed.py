"""The testbed: verifiable list tasks, a documented quality score, a planted defect (docs/testbed.md).

Every number of the testbed preset is computable exactly from the instruction text alone: the
verifier (`quality`), the oracle annotator and the verifier judge (sgpo.llm.oracle) parse the same
instruction string the policy sees, so nothing travels beside the real prompts.

Tasks (lists of 3-6 digits, written space-separated):

    Reverse the list: 3 1 4 1     -> 1 4 1 3
    Sort the list: 3 1 4 1        -> 1 1 3 4
    Remove duplicates from the list: 3 1 4 1  -> 3 1 4     (first occurrences, in order)
    Count the items in the list: 3 1 4 1      -> 4

Quality score, version SCORE_VERSION, of an output for an instruction with gold answer g:

    items   = the output's leading run of whitespace-separated integers
    extra   = whatever follows them (non-empty: the verbosity habit, or any other chatter)
    content = |{i : items[i] == g[i]}| / max(|items|, |g|)      (positional partial credit)
    quality = content * (0.5 if extra else 1.0)
    exact   = items == g and not extra

The planted defect: in D_sft, a fixed share (DEFECT_SHARE) of the targets carry the verbosity
habit HABIT after a correct answer; the improver, po, prefs and eval references are clean. SFT
imitates the habit at about that rate; removing it needs no new ability, only a preference.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

SCORE_VERSION = "v1"
HABIT = " I hope this helps!"
DEFECT_SHARE = 0.4
TASKS = {
    "reverse": "Reverse the list: ",
    "sort": "Sort the list: ",
    "dedup": "Remove duplicates from the list: ",
    "count": "Count the items in the list: ",
}
SPLITS = {"sft": 3000, "improver": 400, "po": 400, "prefs": 400, "eval": 1000}
DATA_SEED = 14
_INSTRUCTION = re.compile(
    r"^(" + "|".join(re.escape(v.strip()) for v in TASKS.values()) + r")\s*((?:\d+\s*)+)$"
)


def solve(task: str, items: list[int]) -> list[int]:
    if task == "reverse":
        return items[::-1]
    if task == "sort":
        return sorted(items)
    if task == "dedup":
        return list(dict.fromkeys(items))
    if task == "count":
        return [len(items)]
    raise ValueError(f"unknown task {task!r}")


def parse_instruction(instruction: str) -> tuple[str, list[int]] | None:
    """(task, list) from an instruction text, or None if it is not a testbed instruction."""
    m = _INSTRUCTION.match(instruction.strip())
    if m is None:
        return None
    task = next(k for k, v in TASKS.items() if v.strip() == m.group(1))
    return task, [int(t) for t in m.group(2).split()]


def gold(instruction: str) -> list[int] | None:
    parsed = parse_instruction(instruction)
    return solve(*parsed) if parsed else None


def render(items: list[int]) -> str:
    return " ".join(str(i) for i in items)


def split_output(output: str) -> tuple[list[int], str]:
    """(leading integers, the rest stripped)."""
    toks = output.strip().split()
    items: list[int] = []
    for t in toks:
        if not re.fullmatch(r"\d+", t):
            break
        items.append(int(t))
    rest = " ".join(toks[len(items) :])
    return items, rest


def content_credit(items: list[int], target: list[int]) -> float:
    n = max(len(items), len(target))
    return sum(a == b for a, b in zip(items, target)) / n if n else 1.0


def quality(output: str, instruction: str) -> float:
    """The documented quality score in [0, 1] (module docstring); 0 for a non-testbed instruction."""
    target = gold(instruction)
    if target is None:
        return 0.0
    items, extra = split_output(output)
    return content_credit(items, target) * (0.5 if extra else 1.0)


def exact(output: str, instruction: str) -> bool:
    target = gold(instruction)
    items, extra = split_output(output)
    return target is not None and items == target and not extra


def has_extra(output: str) -> bool:
    return bool(split_output(output)[1])


def score_answers(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Verifier summary of (instruction, output) pairs: mean quality, exact match, habit rate, with SEs."""
    n = len(pairs)
    if not n:
        return {"n": 0}
    q = [quality(o, x) for x, o in pairs]
    e = [float(exact(o, x)) for x, o in pairs]
    h = [float(has_extra(o)) for _, o in pairs]

    def mean_se(v: list[float]) -> tuple[float, float]:
        m = sum(v) / n
        var = sum((x - m) ** 2 for x in v) / (n - 1) if n > 1 else 0.0
        return m, (var / n) ** 0.5

    (qm, qs), (em, es), (hm, hs) = mean_se(q), mean_se(e), mean_se(h)
    return {
        "n": n,
        "mean_quality": qm,
        "mean_quality_se": qs,
        "exact_match": em,
        "exact_match_se": es,
        "habit_rate": hm,
        "habit_rate_se": hs,
        "score_version": SCORE_VERSION,
    }


# --------------------------------------------------------------------------- the oracle's edits


def minimal_improvement(instruction: str, response_a: str, response_b: str) -> str:
    """The oracle annotator's y_imp: response B edited toward the gold answer one step at a time
    (drop the chatter; then, position by position, fix, add or remove one item), stopping before a
    step would make it better than response A; B itself if no step is allowed."""
    target = gold(instruction)
    if target is None:
        return response_b
    cap = quality(response_a, instruction)
    items, extra = split_output(response_b)
    current = render(items) + (f" {extra}" if extra else "")
    if quality(current, instruction) >= cap:
        return response_b
    steps: list[str] = []
    if extra:
        steps.append(render(items))
    work, i = list(items), 0
    while work != target:
        if i < min(len(work), len(target)):
            changed = work[i] != target[i]
            work[i] = target[i]
            i += 1
            if not changed:
                continue
        elif i < len(target):  # too short: add the next item
            work.append(target[i])
            i += 1
        else:  # too long: drop the last item
            work.pop()
        steps.append(render(work))
    best = response_b
    for step in steps:
        if quality(step, instruction) > cap:
            break
        best = step
    return best


# --------------------------------------------------------------------------- the data


def _instance(rng: random.Random, task: str) -> tuple[str, list[int]]:
    n = rng.randint(3, 6)
    if task == "dedup":  # at least one duplicate, so the task is not a copy
        items = [rng.randint(0, 9) for _ in range(n - 1)]
        items.insert(rng.randrange(n), rng.choice(items))
    else:
        items = [rng.randint(0, 9) for _ in range(n)]
    return TASKS[task] + render(items), solve(task, items)


def corrupt(rng: random.Random, answer: list[int]) -> str:
    """An off-policy rejected answer for the DPO baseline: one wrong item, or the verbosity habit."""
    if rng.random() < 0.5:
        return render(answer) + HABIT
    wrong = list(answer)
    i = rng.randrange(len(wrong))
    wrong[i] = (wrong[i] + rng.randint(1, 9)) % 10
    return render(wrong)


def generate(
    seed: int = DATA_SEED, sizes: dict[str, int] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every split, deterministically from `seed`; prompts are distinct across splits."""
    rng = random.Random(seed)
    sizes = sizes or SPLITS
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    names = list(TASKS)
    for split, size in sizes.items():
        rows = []
        while len(rows) < size:
            task = names[len(rows) % len(names)]
            prompt, answer = _instance(rng, task)
            if prompt in seen and split != "sft":
                continue
            seen.add(prompt)
            response = render(answer)
            row: dict[str, Any] = {
                "prompt_id": f"{split}-{len(rows)}",
                "task": task,
                "prompt": prompt,
            }
            if split == "sft" and rng.random() < DEFECT_SHARE:
                response += HABIT
            if split == "prefs":
                row.update(chosen=response, rejected=corrupt(rng, answer))
            row["response"] = response
            rows.append(row)
        out[split] = rows
    return out


def write(out_dir: str | Path, seed: int = DATA_SEED) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in generate(seed).items():
        p = out / f"{split}.jsonl"
        p.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths[split] = p
    return paths


if (
    __name__ == "__main__"
):  # python -m sgpo.data.testbed  -> regenerates sgpo/data/bundled/testbed/*.jsonl
    for name, path in write(Path(__file__).parent / "bundled" / "testbed").items():
        print(name, path)
