"""The vLLM back-ends' settings, checked without vLLM, a model or a process: the server's command
line and environment, the tensor and data parallel sizes against the visible CUDA devices
(in-process vLLM refuses data parallel), and none of these knobs in a cache key. The back-ends
generating for real: tests/integration/generate/test_generation_contract.py."""

from __future__ import annotations

import sys

import pytest

from sgpo.config import SamplingConfig


def test_vllm_server_command_and_missing_python(tmp_path):
    from sgpo.generate.vllm import VLLMServer, resolve_python

    p = SamplingConfig(
        backend="vllm_server",
        vllm_python=sys.executable,
        vllm_dtype="float32",
        vllm_enforce_eager=True,
        vllm_max_model_len=256,
        vllm_extra_args=["--max-num-seqs", "8"],
        vllm_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        seed=3,
    )
    server = VLLMServer(tmp_path, p, trust_remote_code=True)
    cmd = server.command(1234)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for part in (
        f"--model {tmp_path}",
        "--port 1234",
        "--host 127.0.0.1",
        "--dtype float32",
        "--seed 3",
        "--max-model-len 256",
        "--enforce-eager",
        "--trust-remote-code",
        "--generation-config vllm",
        "--max-num-seqs 8",
    ):
        assert part in joined
    env = server.environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(FileNotFoundError, match="setup_vllm_cpu.sh"):
        resolve_python(str(tmp_path / "nope" / "python"))
    from sgpo.generate.vllm import served_model
    from tests.helpers.net import free_port

    with pytest.raises(RuntimeError, match="did not answer"):
        served_model(f"http://127.0.0.1:{free_port()}/v1")
    # runtime-only: none of the vLLM / server knobs reach a cache key, but the back-end and the
    # dtype do (they change the numbers)
    from sgpo.config import cache_payload

    keyed = SamplingConfig(seed=3, backend="vllm_server", vllm_dtype="float32")
    assert cache_payload(p) == cache_payload(keyed) != cache_payload(SamplingConfig(seed=3))


def test_vllm_server_command_carries_tensor_and_data_parallel_sizes(tmp_path):
    from sgpo.config import cache_payload
    from sgpo.generate.vllm import VLLMServer

    def flag(cmd: list[str], name: str) -> str | None:
        return cmd[cmd.index(name) + 1] if name in cmd else None

    p = SamplingConfig(
        backend="vllm_server",
        vllm_python=sys.executable,
        vllm_tensor_parallel_size=2,
        vllm_data_parallel_size=4,
    )
    cmd = VLLMServer(tmp_path, p).command(1234)
    assert (flag(cmd, "--tensor-parallel-size"), flag(cmd, "--data-parallel-size")) == ("2", "4")
    plain = VLLMServer(
        tmp_path, SamplingConfig(backend="vllm_server", vllm_python=sys.executable)
    ).command(1234)
    assert (flag(plain, "--tensor-parallel-size"), flag(plain, "--data-parallel-size")) == (
        "1",
        None,
    )
    # like the tensor parallel size, the data parallel size changes how answers are made, not which: no cache key
    assert cache_payload(p) == cache_payload(SamplingConfig(backend="vllm_server"))


def test_data_parallel_with_the_in_process_vllm_backend_is_a_config_error():
    from pydantic import ValidationError

    from sgpo.config import ConfigError, load_config

    with pytest.raises(ValidationError, match="needs backend=vllm_server"):
        SamplingConfig(backend="vllm", vllm_data_parallel_size=2)
    with pytest.raises(ConfigError, match=r"sample\.sampling[\s\S]*needs backend=vllm_server"):
        load_config(
            "tiny", ["sample.sampling.backend=vllm", "sample.sampling.vllm_data_parallel_size=2"]
        )
    SamplingConfig(
        backend="vllm", vllm_tensor_parallel_size=2
    )  # tensor parallel is fine in-process
    SamplingConfig(backend="vllm_server", vllm_data_parallel_size=2)
    SamplingConfig(
        backend="transformers", vllm_data_parallel_size=2
    )  # vLLM settings, unused by this back-end


@pytest.mark.parametrize(
    "tp, dp, cuda, cpu_vllm, error",
    [
        (1, 1, 0, False, None),  # one device: nothing to check
        (2, 2, 4, False, None),
        (2, 2, 8, None, None),
        (2, 2, 3, False, "4 devices, but 3 CUDA device"),
        (1, 3, 2, None, "3 devices, but 2 CUDA device"),
        (2, 1, 0, False, "no CUDA device is visible"),
        (2, 1, 0, True, None),  # vLLM's CPU build: its own ranks on CPU cores
        (2, 1, 0, None, None),  # unknown build: vLLM reports its own error
        (4, 2, None, None, None),  # nothing countable here
    ],
)
def test_parallel_sizes_are_checked_against_the_visible_cuda_devices(tp, dp, cuda, cpu_vllm, error):
    from sgpo.config import ConfigError
    from sgpo.generate.vllm import check_parallel_sizes

    p = SamplingConfig(
        backend="vllm_server", vllm_tensor_parallel_size=tp, vllm_data_parallel_size=dp
    )
    if error is None:
        check_parallel_sizes(p, cuda_devices=cuda, cpu_vllm=cpu_vllm, cuda_visible="0")
        return
    with pytest.raises(ConfigError) as err:
        check_parallel_sizes(p, cuda_devices=cuda, cpu_vllm=cpu_vllm, cuda_visible="0,1")
    msg = str(err.value)
    assert error in msg
    assert f"vllm_tensor_parallel_size={tp}" in msg and f"vllm_data_parallel_size={dp}" in msg
    assert "CUDA_VISIBLE_DEVICES='0,1'" in msg
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=unset"):
        check_parallel_sizes(p, cuda_devices=cuda, cpu_vllm=cpu_vllm, cuda_visible=None)


def test_in_process_vllm_checks_tensor_parallel_before_the_model_loads(monkeypatch):
    import types

    import sgpo.generate.vllm as v
    from sgpo.config import ConfigError

    fake = types.ModuleType("vllm")
    fake.LLM = lambda **k: pytest.fail("loaded a model")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(v, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(v, "_this_vllm_is_cpu", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(
        ConfigError, match=r"vllm_tensor_parallel_size=2 .*2 devices, but 1 CUDA device.*'3'"
    ):
        v.VLLMGenerator(
            "/nowhere", params=SamplingConfig(backend="vllm", vllm_tensor_parallel_size=2)
        )
