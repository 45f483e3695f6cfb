"""A schedule whose every step has learning rate 0 publishes the start model as 'trained' (issue 20:
testbed-smol's SGPO DPO had 16 pairs = one step, and a 10% warmup ran it at lr 0). Refused, with the
settings to change; the schedules are transformers' own (`get_scheduler`)."""

from __future__ import annotations

import pytest
import torch
from transformers import get_scheduler

from sgpo.train.callbacks import ZeroLearningRateError, check_learning_rate_moves


def _scheduler(name: str, steps: int, warmup: int, lr: float = 1e-5):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=steps)


@pytest.mark.parametrize("name", ["cosine", "linear", "constant_with_warmup", "inverse_sqrt"])
def test_a_one_step_run_inside_its_warmup_is_refused(name):
    with pytest.raises(ZeroLearningRateError, match="all 1 optimizer step.*warmup_ratio"):
        check_learning_rate_moves(_scheduler(name, 1, 1), 1, learning_rate=1e-5, warmup=0.1)


@pytest.mark.parametrize("steps,warmup", [(1, 0), (2, 1), (6, 1), (5, 100)])
def test_a_schedule_with_one_moving_step_passes(steps, warmup):
    check_learning_rate_moves(
        _scheduler("cosine", steps, warmup), steps, learning_rate=1e-5, warmup=warmup
    )
