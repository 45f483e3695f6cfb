"""Tiny end-to-end SAPO runs (DPO, ORPO, reference strategies, ablations) and kill / resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TINY = dict(
    epochs=1,
    batch_size=4,
    buffers=1,  # one buffer, EMA every 2 steps, the EMA as reference: the settings these runs check
    ema_every=2,
    reference_update_every=1,
    max_prompt_length=96,
    max_length=160,
    segment_length=16,
    buffer_capacity=12,
    checkpoint_every=2,
    logging_steps=1,
    generation_batch_size=8,
    dpo={"learning_rate": 1e-4},
    orpo={"learning_rate": 1e-4, "warmup_steps": 0},
)


def tiny_rows(n: int = 12) -> list:
    rows = []
    for line in (REPO / "sgpo/data/bundled/tiny/sft.jsonl").read_text().splitlines()[:n]:
        msgs = json.loads(line)["messages"]
        rows.append((msgs[:-1], msgs[-1]["content"]))
    return rows


def run(tiny_model_dir, tmp_path, name="run", **overrides):
    import torch

    from sgpo.train.sapo import SAPOConfig, train_sapo

    torch.set_num_threads(1)
    cfg = SAPOConfig(**{**TINY, **overrides})
    logged = []
    result = train_sapo(
        str(tiny_model_dir),
        tiny_rows(),
        cfg,
        out_dir=tmp_path / name / "policy",
        ema_out_dir=tmp_path / name / "ema",
        checkpoint_url=str(tmp_path / name / "ckpt"),
        on_metrics=lambda step, m: logged.append((step, m)),
    )
    return result, logged, tmp_path / name


def final_checkpoint(folder: Path):
    from sgpo.train.sapo.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(str(folder / "ckpt")))


def test_dpo_end_to_end(tiny_model_dir, tmp_path):
    result, logged, folder = run(tiny_model_dir, tmp_path)
    assert result.steps == 3 and result.ema_updates == 1  # 12 rows / batch 4; EMA every 2 steps
    assert result.buffer_size == 12 and result.buffer_mean_uses == pytest.approx(1.0)
    assert [s for s, _ in logged] == [1, 2, 3]
    m = logged[-1][1]
    for key in (
        "loss",
        "rewards/margins",
        "rewards/accuracies",
        "ema_updates",
        "buffer_size",
        "buffer_mean_uses",
        "time/generation_s",
        "time/training_s",
        "time/ema_s",
        "time/checkpoint_s",
        "learning_rate",
    ):
        assert key in m, key
    assert m["rewards/margins"] != 0.0  # the policy moved away from its (EMA) reference
    assert (folder / "policy" / "model.safetensors").exists() and (
        folder / "ema" / "model.safetensors"
    ).exists()
    assert not list((folder / "policy").glob("*.bin"))
    ck = final_checkpoint(folder)
    table = ck.buffer_table.to_pylist()
    assert len(table) == 12 and {r["step"] for r in table} == {0, 1, 2}
    assert sum(r["uses"] for r in table) == 12  # 3 steps x 4 draws
    from sgpo.models.tinykit import load_tokenizer

    # the tiny template's end of an assistant turn: <|im_end|> + newline
    end = load_tokenizer(tiny_model_dir)("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    for r in table:  # y- = A + B' + C + end or A + B' + end; y+ = content + end
        content = r["chosen_ids"][: -len(end)]
        assert r["chosen_ids"][-len(end) :] == r["rejected_ids"][-len(end) :] == end
        assert r["rejected_ids"][: r["cut"]] == r["chosen_ids"][: r["cut"]]
        assert r["segment_tokens"] == min(16, len(content))
        assert r["segment_adapted"] == (len(content) < 16)
        if not r["ended_at_eos"]:
            tail = r["chosen_ids"][r["cut"] + r["segment_tokens"] :]
            assert r["rejected_ids"][len(r["rejected_ids"]) - len(tail) :] == tail


def test_orpo_end_to_end(tiny_model_dir, tmp_path):
    result, logged, folder = run(
        tiny_model_dir, tmp_path, loss="orpo", rejected_per_prompt=2, buffer_capacity=16
    )
    assert (
        result.steps == 3 and result.buffer_size == 16
    )  # 3 steps x 4 rows x 2 rejected, FIFO at 16
    m = logged[-1][1]
    assert {"loss", "log_odds_ratio", "log_odds_chosen", "nll_loss"} <= set(m)
    assert final_checkpoint(folder).reference is None  # ORPO has no reference model


def test_reference_strategies(tiny_model_dir, tmp_path):
    import torch

    from sgpo.config import SAPOConfig
    from sgpo.train.sapo.loop import _load_models

    cfg = SAPOConfig(**TINY)
    models = _load_models(cfg, str(tiny_model_dir), torch.device("cpu"), False)
    assert (
        models.reference is models.ema and not models.reference_is_copy
    )  # ema: the EMA model itself
    fixed = _load_models(
        cfg.model_copy(update={"reference": "fixed"}),
        str(tiny_model_dir),
        torch.device("cpu"),
        False,
    )
    assert fixed.reference is not fixed.ema and not fixed.reference_is_copy

    # policy, K = 2: at step 2 the reference is a copy of the policy (checkpoint written at step 2)
    run(
        tiny_model_dir,
        tmp_path,
        "policy",
        reference="policy",
        reference_update_every=2,
        max_steps=2,
    )
    ck = final_checkpoint(tmp_path / "policy")
    assert ck.step == 2 and ck.state["reference_updates"] == 1
    assert all(torch.equal(ck.reference[k], ck.policy[k]) for k in ck.policy)
    # ema, K = 2: the reference is refreshed from the EMA model
    run(tiny_model_dir, tmp_path, "emak", reference="ema", reference_update_every=2, max_steps=2)
    ck = final_checkpoint(tmp_path / "emak")
    assert all(torch.equal(ck.reference[k], ck.ema[k]) for k in ck.ema)
    assert not all(torch.equal(ck.policy[k], ck.ema[k]) for k in ck.ema)


def test_ablations_on_policy_and_whole_answer(tiny_model_dir, tmp_path):
    one_step = {"max_steps": 1, "dpo": {"learning_rate": 1e-4, "warmup_ratio": 0.0}}  # no lr-0 step
    result, _, folder = run(tiny_model_dir, tmp_path, "onpol", rejected_by="policy", **one_step)
    assert result.steps == 1
    result, _, folder = run(tiny_model_dir, tmp_path, "whole", segment=False, **one_step)
    for r in final_checkpoint(folder).buffer_table.to_pylist():
        # B is all of y+'s content (y+ = content + <|im_end|> + newline)
        assert r["cut"] == 0 and r["segment_tokens"] == len(r["chosen_ids"]) - 2


# --------------------------------------------------------------------------- kill / resume

SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {repo!r})
    from sgpo.train.sapo import SAPOConfig, SAPOInterrupted, train_sapo
    rows = []
    for line in open({rows!r}).read().splitlines()[:12]:
        m = json.loads(line)["messages"]; rows.append((m[:-1], m[-1]["content"]))
    cfg = SAPOConfig(**json.loads({cfg!r}))
    delay = float(sys.argv[2])
    try:
        r = train_sapo({model!r}, rows, cfg, out_dir=sys.argv[1] + "/policy", checkpoint_url=sys.argv[1] + "/ckpt",
                       on_metrics=lambda step, m: time.sleep(delay))
        print("RESUMED_FROM", r.resumed_from_step)
    except SAPOInterrupted as e:
        print("INTERRUPTED", e); sys.exit(3)
""")


def _start(script: Path, folder: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(folder), str(delay)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint(
    folder: Path, at_least: int, proc: subprocess.Popen, timeout: float = 180
) -> int:
    from sgpo.train.sapo.checkpoint import complete_steps

    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = complete_steps(str(folder / "ckpt"))
        if steps and steps[-1] >= at_least:
            return steps[-1]
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow  # 30 s; the stage-level kill/resume (test_sapo_stage.py) stays default
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tiny_model_dir, tmp_path):
    """SIGKILL after the step-2 checkpoint, then SIGTERM (graceful checkpoint) later, then finish:
    the final policy, EMA, buffer (with use counts) and optimiser state equal the uninterrupted
    run's. Tolerance: exact (CPU, one thread, seeded); compared with torch.equal."""
    import torch

    # 3 epochs of 3 steps = 9 steps, checkpoints every 2 steps, keep 2
    cfg = {**TINY, "epochs": 3, "checkpoint_every": 2}
    script = tmp_path / "sapo_run.py"
    script.write_text(
        SCRIPT.format(
            repo=str(REPO),
            rows=str(REPO / "sgpo/data/bundled/tiny/sft.jsonl"),
            cfg=json.dumps(cfg),
            model=str(tiny_model_dir),
        )
    )
    whole, parts = tmp_path / "whole", tmp_path / "parts"

    p = _start(script, whole, 0.0)
    assert p.wait(timeout=300) == 0, p.stdout.read()

    p = _start(script, parts, 0.4)
    _wait_for_checkpoint(parts, 2, p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    p = _start(script, parts, 0.4)  # resumes from step 2 (or 4)
    _wait_for_checkpoint(parts, 4, p)
    time.sleep(0.6)  # SIGTERM usually lands in step 5 (a step without a periodic checkpoint)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 3 and "INTERRUPTED" in out, out
    p = _start(script, parts, 0.0)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    resumed = int(out.split("RESUMED_FROM")[1].split()[0])
    assert 4 <= resumed < 9 and "INTERRUPTED" not in out  # from the checkpoint SIGTERM wrote

    a, b = final_checkpoint(whole), final_checkpoint(parts)
    assert a.step == b.step == 9
    for name in ("policy", "ema"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert a.buffer_table.equals(b.buffer_table)
    assert all(
        torch.equal(a.optimizer["state"][i][k], b.optimizer["state"][i][k])
        for i in a.optimizer["state"]
        for k in a.optimizer["state"][i]
    )
    assert a.scheduler == b.scheduler
    assert {k: a.state[k] for k in ("step", "ema_updates")} == {
        k: b.state[k] for k in ("step", "ema_updates")
    }


def test_micro_batches_give_the_same_dpo_step(tiny_model_dir, tmp_path):
    import torch

    run(tiny_model_dir, tmp_path, "full", max_steps=2)
    run(tiny_model_dir, tmp_path, "micro", max_steps=2, micro_batch_size=1)
    a, b = final_checkpoint(tmp_path / "full"), final_checkpoint(tmp_path / "micro")
    assert all(torch.allclose(a.policy[k], b.policy[k], atol=1e-6) for k in a.policy)
    assert a.buffer_table.equals(b.buffer_table)
