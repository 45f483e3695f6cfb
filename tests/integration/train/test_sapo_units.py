"""SAPO building blocks against real components: the dataset errors name the key with the tiny
tokenizer, and the checkpoint code round-trips on the S3 protocol (moto's server). The
hand-checkable pieces: tests/unit/train/test_sapo_units.py."""

from __future__ import annotations

import pytest

from sgpo.config import SAPOConfig, SAPOConfigError
from sgpo.train.sapo.buffer import BufferEntry, ReplayBuffer

EOS = 2


def entry(i: int, uses: int = 0) -> BufferEntry:
    return BufferEntry(
        prompt="[]",
        prompt_ids=[1],
        chosen_ids=[i, EOS],
        rejected_ids=[i + 100, EOS],
        cut=0,
        segment_tokens=1,
        segment_adapted=False,
        ended_at_eos=False,
        step=i,
        entry_id=i,
        uses=uses,
    )


def test_dataset_errors_name_the_key(tiny_model_dir):
    from sgpo.models.tinykit import load_tokenizer
    from sgpo.train.sapo.loop import tokenize_rows

    tok = load_tokenizer(tiny_model_dir)
    cfg = SAPOConfig(
        max_prompt_length=64, max_length=128, segment_length=16, batch_size=2, buffer_capacity=4
    )
    with pytest.raises(SAPOConfigError, match="^rows: the dataset is empty"):
        tokenize_rows([], tok, cfg)
    rows = [
        ([{"role": "user", "content": "hi"}], "hello"),
        ([{"role": "user", "content": "hi"}], ""),
    ]
    with pytest.raises(SAPOConfigError, match=r"^rows\[1\]\.chosen: .*shorter than one token"):
        tokenize_rows(rows, tok, cfg)
    ex = tokenize_rows(rows[:1], tok, cfg)[0]
    assert ex.answer_ids == ex.content_ids + ex.end_ids and tok.eos_token_id in ex.end_ids


def test_checkpoint_round_trip_on_s3(s3_endpoint):
    """The same checkpoint code on real S3 protocol (moto): marker last, latest found, state back."""
    import torch

    from sgpo.train.sapo.checkpoint import (
        complete_steps,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    opt = torch.optim.RMSprop(policy.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    policy(torch.randn(2, 3)).sum().backward()
    opt.step()
    sched.step()
    buf = ReplayBuffer(capacity=4)
    for i in range(3):
        buf.push(entry(i, uses=i))
    url, so = "s3://sgpo-test/sapo-ckpt", {"endpoint_url": s3_endpoint}
    for step in (2, 4, 6):
        save_checkpoint(
            url,
            step,
            policy=policy,
            ema=ema,
            reference=None,
            optimizer=opt,
            scheduler=sched,
            buffers={0: buf},
            n_buffers=1,
            state={"ema_updates": step // 2},
            keep=2,
            storage_options=so,
        )
    assert complete_steps(url, so) == [4, 6]
    ck = load_checkpoint(latest_checkpoint(url, so), so)
    assert ck.step == 6 and ck.state["ema_updates"] == 3 and ck.reference is None
    assert all(torch.equal(ck.policy[k], v) for k, v in policy.state_dict().items())
    assert ReplayBuffer.from_table(ck.buffer_table, 4).snapshot() == buf.snapshot()
    fresh = torch.optim.RMSprop(policy.parameters(), lr=0.1)
    fresh.load_state_dict(ck.optimizer)
    assert torch.equal(
        fresh.state_dict()["state"][0]["square_avg"], opt.state_dict()["state"][0]["square_avg"]
    )
    assert ck.scheduler["last_epoch"] == 1
