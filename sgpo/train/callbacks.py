"""The trainers' callback: training logs to the stage's MLflow run, the report's curves, a progress
line in the run's log every 30 s, and the stage's progress artifact in the Prefect UI."""

from __future__ import annotations

import logging
import time
from typing import Any

from sgpo.core.progress import stage_progress
from sgpo.core.tracking import StageTracker

log = logging.getLogger(__name__)


class TrainingProgress:
    """A progress line of a training stage (step, loss, steps/s, tokens/s) at most every
    `every_s` seconds and at the last step, to the run's logger (the GPU child run's log in the UI)."""

    def __init__(self, every_s: float = 30.0, logger: logging.Logger | None = None):
        self.every_s, self._logger = every_s, logger
        self.t0 = self.last = time.monotonic()
        self.lines: list[str] = []

    def maybe_log(self, step: int, max_steps: int | None, logs: dict[str, Any]) -> str | None:
        now = time.monotonic()
        if now - self.last < self.every_s and not (max_steps and step >= max_steps):
            return None
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        parts = [f"step {step}" + (f"/{max_steps}" if max_steps else "")]
        for key, label in (
            ("loss", "loss"),
            ("train_loss", "train loss"),
            ("rewards/margins", "reward margin"),
            ("rewards/accuracies", "reward acc"),
            ("learning_rate", "lr"),
        ):
            if isinstance(logs.get(key), (int, float)):
                parts.append(f"{label} {logs[key]:.4g}")
        parts.append(f"{step / elapsed:.2f} steps/s")
        if isinstance(logs.get("num_tokens"), (int, float)):
            parts.append(f"{logs['num_tokens'] / elapsed:.0f} tokens/s")
        line = "training: " + ", ".join(parts)
        self.lines.append(line)
        (self._logger or _run_logger()).info(line)
        return line


def _run_logger() -> logging.Logger:
    """Prefect's run logger inside a run, this module's logger outside one."""
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        return log


class ZeroLearningRateError(ValueError):
    """Every optimizer step of a training run would have learning rate 0: the model would come out
    unchanged and be published as trained."""


def check_learning_rate_moves(
    scheduler: Any, steps: int, *, learning_rate: float, warmup: Any
) -> None:
    """Refuse a schedule whose every one of `steps` optimizer steps has learning rate 0: a warmup
    that covers a one-step run (transformers' warmup starts at 0), or a rate of 0. Reads the
    scheduler's own multipliers (LambdaLR, what transformers' `get_scheduler` builds); other
    schedulers are not checked."""
    lambdas, base = getattr(scheduler, "lr_lambdas", None), getattr(scheduler, "base_lrs", None)
    if not lambdas or not base or steps <= 0:
        return
    if any(f(s) * lr > 0 for s in range(steps) for f, lr in zip(lambdas, base)):
        return
    raise ZeroLearningRateError(
        f"training would not change the model: all {steps} optimizer step(s) have learning rate 0 "
        f"(learning_rate {learning_rate}, warmup {warmup}; a warmup starts at 0). Set the stage's "
        "warmup_ratio / warmup_steps to 0, lower effective_batch_size, or train on more rows"
    )


def zero_learning_rate_guard() -> Any:
    """A TrainerCallback that runs `check_learning_rate_moves` on the trainer's own scheduler before
    the first step (TRL's trainers build it inside `train()`)."""
    from transformers import TrainerCallback

    class ZeroLearningRateGuard(TrainerCallback):
        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            check_learning_rate_moves(
                lr_scheduler,
                state.max_steps,
                learning_rate=args.learning_rate,
                warmup=args.warmup_steps,
            )

    return ZeroLearningRateGuard()


def mlflow_callback(tracker: StageTracker) -> Any:
    """A transformers TrainerCallback that sends the trainer's logs to the stage's run."""
    from transformers import TrainerCallback

    progress = TrainingProgress()
    bar: list[Any] = [None]

    class MlflowStageCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                nums = {
                    k: v
                    for k, v in logs.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                tracker.log_metrics(nums, step=state.global_step)
                tracker.history.append(
                    {"step": state.global_step, **{k: float(v) for k, v in nums.items()}}
                )
                progress.maybe_log(state.global_step, state.max_steps, nums)

        def on_step_end(self, args, state, control, **kwargs):
            if (
                bar[0] is None
            ):  # lines come from TrainingProgress; this is the UI's progress artifact
                bar[0] = stage_progress(tracker.stage, state.max_steps or 0, bar=False)
            bar[0](state.global_step, state.max_steps or 0)

    return MlflowStageCallback()
