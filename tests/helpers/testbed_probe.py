"""A one-minute probe of the method's effect on the testbed, for the default test suite.

A smaller testbed than the preset (docs/testbed.md, "Fast regression"): a tiny model (hidden 64,
1 layer) SFT-ed on N_SFT testbed rows (40% carry the verbosity habit), then one round of
preference optimisation on D_po prompts with the real training glue (sgpo.train.trainers.train_dpo,
DPO + NLL on chosen) and the real pair builder (tasks.pairs.build_pairs): rejected = the policy's
sample, chosen = the oracle's minimal fix of it toward the reference (sgpo.data.testbed.minimal_improvement,
the refinement SGPO's improver is trained to imitate). `variant` breaks the method on purpose:

    "method"   chosen = the minimal fix, rejected = the policy's sample
    "swapped"  chosen and rejected swapped (a wiring bug)
    "no_ref"   the fix is made with no reference (response A = B itself: the oracle may not improve)

The outcome is the verifier's mean score and habit rate of sampled answers on N_EVAL eval prompts.
`python tests/helpers/testbed_probe.py [seeds...]` prints the outcome of every variant per seed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

N_SFT, N_PO, N_EVAL = 600, 200, 300


def _rows(split: str, n: int) -> list[dict[str, Any]]:
    import json

    from sgpo.data.sources import BUNDLED_DIR

    lines = (BUNDLED_DIR / "testbed" / f"{split}.jsonl").read_text().splitlines()[:n]
    return [json.loads(x) for x in lines]


def _sampling(seed: int):
    from sgpo.config import SamplingConfig

    return SamplingConfig(max_new_tokens=16, batch_size=100, seed=seed)


def _score(model_dir: str, rows: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    from sgpo.data.testbed import score_answers
    from sgpo.generate import answer_each

    answers = answer_each(model_dir, [r["prompt"] for r in rows], _sampling(seed))
    return score_answers([(r["prompt"], a.text) for r, a in zip(rows, answers)])


def pi_sft(work: Path, seed: int = 0) -> str:
    """The probe's pi_sft (built and SFT-ed in `work`; reused if there)."""
    import torch

    from sgpo.config import SFTStageConfig, TinyModelConfig
    from sgpo.core.tracking import StageTracker
    from sgpo.models.tinykit import build_bundled_tiny_model
    from sgpo.train.trainers import train_sft

    out = work / f"sft-{seed}"
    if (out / "config.json").exists():
        return str(out)
    torch.set_num_threads(1)
    base = build_bundled_tiny_model(
        work / f"base-{seed}",
        TinyModelConfig(
            vocab_size=512,
            hidden_size=64,
            num_attention_heads=1,
            num_hidden_layers=1,
            intermediate_size=128,
            seed=seed,
        ),
    )
    cfg = SFTStageConfig(
        epochs=2,
        learning_rate=3e-3,
        per_device_batch_size=16,
        effective_batch_size=16,
        max_length=64,
        warmup_ratio=0.0,
        seed=seed,
    )
    train_sft(
        str(base),
        [([{"role": "user", "content": r["prompt"]}], r["response"]) for r in _rows("sft", N_SFT)],
        cfg,
        out,
        tracker=StageTracker(),
    )
    return str(out)


def preference_step(sft_dir: str, work: Path, variant: str, seed: int = 0) -> str:
    from sgpo.config import DPOStageConfig, PairsStageConfig
    from sgpo.core.tracking import StageTracker
    from sgpo.data.testbed import minimal_improvement
    from sgpo.generate import answer_each
    from sgpo.train.trainers import train_dpo
    from tasks.pairs import build_pairs

    po = [
        {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "reference": r["response"]}
        for r in _rows("po", N_PO)
    ]
    samples = [a.text for a in answer_each(sft_dir, [r["prompt"] for r in po], _sampling(seed))]
    refined = [
        minimal_improvement(r["prompt"], r["reference"] if variant != "no_ref" else y, y)
        for r, y in zip(po, samples)
    ]
    pairs = build_pairs(po, [[y] for y in samples], refined, PairsStageConfig(chosen="refined"))
    data = [([{"role": "user", "content": p["prompt"]}], p["chosen"], p["rejected"]) for p in pairs]
    if variant == "swapped":
        data = [(x, r, c) for x, c, r in data]
    data = [d for d in data if d[1] != d[2]] or data[:1]  # the dpo stage skips identical pairs
    cfg = DPOStageConfig(
        epochs=2,
        learning_rate=2e-3,
        beta=0.3,
        loss_type="sigmoid+sft",
        per_device_batch_size=16,
        effective_batch_size=16,
        max_length=64,
        warmup_ratio=0.0,
        seed=seed,
    )
    out = work / f"po-{variant}-{seed}"
    train_dpo(sft_dir, data, cfg, out, tracker=StageTracker())
    return str(out)


def probe(
    seed: int = 0,
    variants: tuple[str, ...] = ("method", "swapped", "no_ref"),
    work: Path | None = None,
) -> dict[str, Any]:
    """{'sft': scores, variant: scores}: the verifier's outcome of pi_sft and of each variant."""
    with tempfile.TemporaryDirectory(prefix="sgpo-probe-") as tmp:
        w = Path(work or tmp)
        sft_dir = pi_sft(w, seed)
        ev = _rows("eval", N_EVAL)
        out = {"sft": _score(sft_dir, ev, seed)}
        for v in variants:
            out[v] = _score(preference_step(sft_dir, w, v, seed), ev, seed)
        return out


if __name__ == "__main__":
    import time

    for s in [int(a) for a in sys.argv[1:]] or [0]:
        t0 = time.perf_counter()
        res = probe(s)
        print(
            f"seed {s} ({time.perf_counter() - t0:.0f}s): "
            + "; ".join(
                f"{k}: score {v['mean_quality']:.3f} ± {v['mean_quality_se']:.3f}, exact {v['exact_match']:.3f}, "
                f"habit {v['habit_rate']:.3f}"
                for k, v in res.items()
            ),
            flush=True,
        )
