"""Batched segment regeneration (left padding) on the tiny model; the SAPO presets are checked in
tests/unit/train/test_sapo_units.py."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_batched_regeneration_matches_one_by_one(tiny_model_dir):
    import torch

    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.checkpoints import load_model
    from sgpo.train.sapo.generate import SamplingSettings, hf_regenerate

    torch.set_num_threads(1)
    tok, model = load_tokenizer(tiny_model_dir), load_model(str(tiny_model_dir))
    prefixes = [
        tok("a short one")["input_ids"],
        tok("a much longer prefix of several more words")["input_ids"],
        [5],
    ]
    budgets = [3, 7, 5]
    greedy = SamplingSettings(n=1, temperature=0.0, top_p=1.0, top_k=0, seed=0, batch_size=8)
    batched = hf_regenerate(model, tok, prefixes, budgets, greedy)
    single = [hf_regenerate(model, tok, [p], [b], greedy)[0] for p, b in zip(prefixes, budgets)]
    assert batched == single  # left padding does not change what each row generates
    for rows, budget in zip(batched, budgets):
        assert len(rows) == 1 and 1 <= len(rows[0]) <= budget
    sampled = hf_regenerate(model, tok, prefixes, budgets, SamplingSettings(4, 0.7, 0.95, 50, 1, 2))
    assert [len(r) for r in sampled] == [4, 4, 4]  # n samples per prefix
    model.train()  # e.g. the on-policy ablation samples from the policy between training steps
    again = hf_regenerate(model, tok, prefixes, budgets, SamplingSettings(4, 0.7, 0.95, 50, 1, 2))
    assert sampled == again  # seeded, and eval mode while sampling
    assert model.training  # the caller's mode is restored
