"""SAPO's batch semantics and cadences against the published runs (issue 21, items 1-2): 8 processes x
8 rows, one replay buffer each, EMA before every step, the reference refreshed every 108 steps."""

from __future__ import annotations

import pytest

from sgpo.config import LaunchConfig, SAPOConfig, load_config
from sgpo.train.launch import LaunchConfigError
from sgpo.train.sapo.ema import ema_due, reference_refresh_due
from sgpo.train.sapo.launch import sapo_plan
from sgpo.train.sapo.loop import buffer_rows, epoch_order, rows_for_step, total_steps


def test_defaults_are_the_published_runs():
    # configs/config.yaml + scripts/sapo_dpo.sh: per_device_train_batch_size 8, 8 processes, one
    # 2000-entry buffer per process, ema_beta 0.5, ref refresh at global_step % 108
    cfg = SAPOConfig()
    assert (cfg.batch_size, cfg.buffers, cfg.pairs_per_step) == (8, 8, 64)
    assert (cfg.buffer_capacity, cfg.ema_alpha, cfg.ema_every) == (2000, 0.5, 1)
    assert (cfg.reference, cfg.reference_update_every, cfg.long_prompts) == ("ema", 108, "drop")


def test_steps_count_pairs_of_all_buffers():
    # 6,912 rows at 64 pairs a step: 108 steps an epoch, 432 in the paper's 4 epochs
    assert total_steps(SAPOConfig(), 6912) == 432
    # one row more: a 109th step (the short last batch is filled, not dropped)
    assert total_steps(SAPOConfig(epochs=1), 6913) == 109
    assert total_steps(SAPOConfig(epochs=1, buffers=1), 6912) == 864  # 8 pairs a step
    assert total_steps(SAPOConfig(max_steps=5), 6912) == 5


def test_a_step_takes_consecutive_rows_and_each_buffer_its_slice():
    order = epoch_order(10, 7, 0)
    assert rows_for_step(10, 4, 7, 0) == order[0:4]
    assert rows_for_step(10, 4, 7, 1) == order[4:8]
    # the last batch of the epoch: 2 rows left, filled from the start of the same order
    assert rows_for_step(10, 4, 7, 2) == order[8:10] + order[0:2]
    assert rows_for_step(10, 4, 7, 3) == epoch_order(10, 7, 1)[0:4]  # epoch 1
    assert rows_for_step(3, 8, 7, 0) == (epoch_order(3, 7, 0) * 3)[:8]  # fewer rows than a batch
    step = list(range(100, 108))  # 4 buffers x 2 rows
    assert [buffer_rows(step, k, 2) for k in range(4)] == [
        [100, 101],
        [102, 103],
        [104, 105],
        [106, 107],
    ]


def test_ema_and_reference_cadences_in_steps():
    cfg = SAPOConfig()
    steps = range(1, 330)
    assert all(ema_due(s, cfg.ema_every) for s in steps)  # before every step
    refreshed = [s for s in steps if reference_refresh_due("ema", s, cfg.reference_update_every)]
    assert refreshed == [108, 216, 324]
    policy = [s for s in steps if reference_refresh_due("policy", s, cfg.reference_update_every)]
    assert policy == [108, 216, 324]  # policy-ref: the same period, not every step


def test_processes_must_divide_the_buffers():
    # refused by the launch plan, before any process starts (the recipe's `hardware` reaches the
    # section after the section's own checks)
    cfg = load_config(
        "tiny",
        [
            "method=sapo-dpo",
            "sapo.buffers=3",
            "hardware.num_processes=2",
            "hardware.accelerate_config=ddp",
        ],
    )
    with pytest.raises(LaunchConfigError, match=r"sapo.buffers = 3 is not a multiple of the 2"):
        sapo_plan(cfg.sapo, "sapo")
    one = SAPOConfig(buffers=3, launch=LaunchConfig(num_processes=1))
    assert sapo_plan(one, "sapo") is None  # one process holds all three


def test_sharded_launches_are_refused():
    for name in ("zero3", "fsdp"):
        cfg = SAPOConfig(launch=LaunchConfig(num_processes=2, accelerate_config=name))
        with pytest.raises(LaunchConfigError, match="sapo.launch.accelerate_config .* use ddp"):
            sapo_plan(cfg, "sapo")


def test_the_recipes_hardware_reaches_the_sapo_stage():
    cfg = load_config(
        "tiny", ["method=sapo-dpo", "hardware.num_processes=2", "hardware.accelerate_config=ddp"]
    )
    assert (cfg.sapo.launch.num_processes, cfg.sapo.launch.accelerate_config) == (2, "ddp")
