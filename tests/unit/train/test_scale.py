"""Training at scale (issue 11), decided before any process starts: the launch and LoRA fields keep
every existing cache key, the hardware section reaches each training stage unless it sets its own,
one process trains in process, and bad launches are refused before any work. Launches for real:
tests/integration/train/test_scale.py."""

from __future__ import annotations

import importlib.util
import os

import pytest

from artifacts.refs import ArtifactRef
from sgpo.config import ConfigError, LaunchConfig, load_config
from sgpo.train.launch import LaunchConfigError, launch_plan
from tasks import get_stage


def _ref(name: str, h: str) -> ArtifactRef:
    return ArtifactRef(
        uri=f"file:///x/{name}", kind="table", stage=name, cache_key="k", content_hash=h
    )


def test_launch_and_lora_fields_keep_every_existing_cache_key():
    """Keys computed by the commit before these fields existed (14ee863): the finished artifacts of
    every existing configuration stay valid."""
    cfg = load_config(
        "tiny",
        ["hardware.num_processes=2", "hardware.accelerate_config=ddp", "dpo.reference_logps=live"],
    )
    expected = {
        "sft": ("base", "data", "a9e6d9b2ab1ec39be4e93919d31467c89a04af23db3ce4c002731d7783920d1d"),
        "improver_sft": (
            "start",
            "filtered",
            "69a36a5a76e13ff62f814344003764d854cbc83fb6f23addf1097c8b648ab202",
        ),
        "dpo": (
            "start",
            "pairs",
            "a4a387c6c9752e5068719bf19470d82ea06f26da3ec7a52b1f629d8405d01684",
        ),
    }
    for name, (a, b, key) in expected.items():
        assert (
            get_stage(name).cache_key(getattr(cfg, name), {a: _ref(a, "h1"), b: _ref(b, "h2")})
            == key
        ), name
    lora = load_config("tiny", ["sft.lora=true"])
    assert lora.sft.lora is not None and lora.sft.lora.r == 16
    assert (
        get_stage("sft").cache_key(
            lora.sft, {"base": _ref("base", "h1"), "data": _ref("data", "h2")}
        )
        != expected["sft"][2]
    )


def test_hardware_section_reaches_every_training_stage_unless_the_stage_sets_its_own():
    cfg = load_config(
        "tiny",
        [
            "hardware.num_processes=4",
            "hardware.accelerate_config=zero3",
            "dpo.launch.num_processes=2",
        ],
    )
    assert (cfg.sft.launch.num_processes, cfg.sft.launch.accelerate_config) == (4, "zero3")
    assert cfg.improver_sft.launch.num_processes == 4
    assert (cfg.dpo.launch.num_processes, cfg.dpo.launch.accelerate_config) == (2, None)
    assert load_config("tiny").sft.launch == LaunchConfig()
    with pytest.raises(ConfigError, match="hardware.num_processes"):
        load_config("tiny", ["hardware.num_processes=0"])


def test_one_process_trains_in_process():
    assert launch_plan(LaunchConfig()) is None
    assert launch_plan(LaunchConfig(num_processes=1, accelerate_config="ddp")) is None


def test_bad_launches_are_refused_before_any_work():
    with pytest.raises(LaunchConfigError, match="'nope.yaml' does not exist.*zero3"):
        launch_plan(LaunchConfig(accelerate_config="nope.yaml", num_processes=2))
    too_many = (os.cpu_count() or 1) + 1
    with pytest.raises(LaunchConfigError, match=f"num_processes = {too_many} but this machine has"):
        launch_plan(LaunchConfig(num_processes=too_many), where="sft.launch")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(
            LaunchConfigError, match="DeepSpeed.*deepspeed package is not installed"
        ):
            launch_plan(LaunchConfig(accelerate_config="zero3", num_processes=1))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(LaunchConfigError, match="FSDP.*needs CUDA GPUs"):
            launch_plan(LaunchConfig(accelerate_config="fsdp", num_processes=2))
