"""vLLM back-ends, two modes behind the one Generator contract.

* `backend: vllm` (`VLLMGenerator`): in-process `vllm.LLM`, one `LLM.chat` call over the whole
  batch. Needs vLLM importable in this interpreter (GPU worker image: `pip install 'sgpo[vllm]'`).
* `backend: vllm_server` (`VLLMServerGenerator`): vLLM's OpenAI-compatible server, driven over
  HTTP with bounded concurrency (`sampling.max_concurrency`) by the same client as
  `backend: openai`. With `sampling.base_url` set it uses that already running server; without,
  it starts `<vllm_python> -m vllm.entrypoints.openai.api_server` for the checkpoint being
  sampled (free loopback port, waits until the server answers, stops it on close). vLLM may
  live in another virtualenv (`sampling.vllm_python: .venv-vllm/bin/python`, made by
  scripts/setup_vllm_cpu.sh), so the pipeline's own environment never has to hold it.

One seeding rule for both modes (and for `backend: openai`): sample k of prompt i is one request
with seed `sampling.seed + i * n + k`. So a config gives the same samples whatever the batch,
order or concurrency, in-process or served (up to the floating-point differences of batching,
which vLLM does not promise to avoid). Sampling is what the config says and nothing else:
temperature, top_p, max_tokens, seed; no top-k, no repetition penalty. The server is started
with `--generation-config vllm` so a checkpoint's generation_config.json (e.g. top_k=20,
repetition_penalty=1.05 for Qwen2.5-Instruct) does not silently change the paper's settings.
Prompts go through the checkpoint's own chat template in both modes.

Parallelism: `sampling.vllm_tensor_parallel_size` (both modes) and `sampling.vllm_data_parallel_size`
(vllm_server only: the server runs that many replicas behind one endpoint, `--data-parallel-size`;
one in-process `vllm.LLM` has no data parallelism, a config error). Before a model loads,
`check_parallel_sizes` compares tensor x data parallel with the CUDA devices the vLLM interpreter
sees (CUDA_VISIBLE_DEVICES applied); without CUDA, sizes above 1 need vLLM's CPU build.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgpo.generate.contract import Generation
from sgpo.generate.openai_server import OpenAIServerGenerator

if TYPE_CHECKING:
    from sgpo.config import SamplingConfig

log = logging.getLogger(__name__)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SERVED_MODEL_NAME = "sgpo-policy"


def sample_seed(params: SamplingConfig, prompt_index: int, sample_index: int) -> int:
    """The seed of sample k of prompt i (shared by every per-request-seeded back-end)."""
    return params.seed + prompt_index * params.n + sample_index


def _finish(reason: str | None) -> str:
    # vLLM reports "stop" (EOS or a stop string), "length", or "abort" (never for a finished batch)
    return "length" if reason == "length" else "stop"


# --------------------------------------------------------------------------- parallelism


def check_parallel_sizes(
    params: SamplingConfig,
    *,
    cuda_devices: int | None,
    cpu_vllm: bool | None,
    cuda_visible: str | None,
) -> None:
    """Raise a ConfigError, before any model loads, when tensor x data parallel cannot run here.

    `cuda_devices`: the CUDA devices the interpreter that runs vLLM sees (None: it could not tell);
    `cpu_vllm`: whether that vLLM is the CPU build (None: unknown); `cuda_visible`: its
    CUDA_VISIBLE_DEVICES (None: unset), named in the error."""
    from sgpo.config import ConfigError

    tp, dp = params.vllm_tensor_parallel_size, params.vllm_data_parallel_size
    need = tp * dp
    if need == 1 or cuda_devices is None:
        return  # nothing to split, or nothing checkable here (vLLM reports its own error)
    sizes = f"sampling.vllm_tensor_parallel_size={tp} x sampling.vllm_data_parallel_size={dp} = {need} devices"
    visible = "unset" if cuda_visible is None else repr(cuda_visible)
    if cuda_devices >= 1:
        if need > cuda_devices:
            raise ConfigError(
                f"{sizes}, but {cuda_devices} CUDA device(s) are visible here (CUDA_VISIBLE_DEVICES={visible}): "
                f"lower the sizes, or run the stage on a worker with {need} GPUs (CUDA_VISIBLE_DEVICES, or the "
                "Kubernetes cuda pool's gpu_count)"
            )
        return
    if cpu_vllm is not False:
        return  # vLLM's CPU build runs its tensor / data parallel ranks on CPU cores (None: unknown, vLLM says)
    raise ConfigError(
        f"{sizes}, but no CUDA device is visible here (CUDA_VISIBLE_DEVICES={visible}) and the vLLM that would run "
        "them is not vLLM's CPU build: run the stage on a GPU worker, or set both sizes to 1"
    )


def _cuda_device_count() -> int | None:
    """CUDA devices this interpreter sees (CUDA_VISIBLE_DEVICES applied); None without torch."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return int(torch.cuda.device_count())


def _this_vllm_is_cpu() -> bool | None:
    try:
        from vllm.platforms import current_platform
    except Exception:  # pragma: no cover - depends on the vLLM build
        return None
    return bool(current_platform.is_cpu())


# Run by the server's interpreter, in the server's environment: what check_parallel_sizes needs to know.
_PROBE = """
import json
try:
    import torch
    cuda = int(torch.cuda.device_count())
except Exception:
    cuda = None
try:
    from vllm.platforms import current_platform
    cpu = bool(current_platform.is_cpu())
except Exception:
    cpu = None
print(json.dumps({"cuda_devices": cuda, "cpu_vllm": cpu}))
"""


def probe_interpreter(python: str, env: dict[str, str], timeout_s: float = 300.0) -> dict[str, Any]:
    """{cuda_devices, cpu_vllm} as `python` sees them in `env` (Nones when it cannot say)."""
    import json

    try:
        out = subprocess.run(
            [python, "-c", _PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        log.warning(
            "could not ask %s how many CUDA devices it sees; vLLM checks the parallel sizes itself",
            python,
        )
        return {"cuda_devices": None, "cpu_vllm": None}


# --------------------------------------------------------------------------- in-process


class VLLMGenerator:
    """In-process `vllm.LLM` (GPU workers; on CPU only with the vllm-cpu build)."""

    def __init__(
        self,
        model_dir: str,
        *,
        trust_remote_code: bool = False,
        params: SamplingConfig | None = None,
        **engine_kwargs: Any,
    ):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the worker image
            raise RuntimeError(
                "sampling.backend=vllm needs the vllm package in this interpreter (pip install 'sgpo[vllm]'); "
                "without it, use sampling.backend=vllm_server with sampling.vllm_python=<a python that has vLLM>"
            ) from e
        kwargs: dict[str, Any] = {}
        if params is not None:
            if (
                params.vllm_tensor_parallel_size > 1
            ):  # before the model loads (data parallel > 1: a config error)
                check_parallel_sizes(
                    params,
                    cuda_devices=_cuda_device_count(),
                    cpu_vllm=_this_vllm_is_cpu(),
                    cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
                )
            kwargs.update(
                dtype=params.vllm_dtype,
                enforce_eager=params.vllm_enforce_eager,
                seed=params.seed,
                tensor_parallel_size=params.vllm_tensor_parallel_size,
            )
            if params.vllm_max_model_len is not None:
                kwargs["max_model_len"] = params.vllm_max_model_len
            if params.vllm_gpu_memory_utilization is not None:
                kwargs["gpu_memory_utilization"] = params.vllm_gpu_memory_utilization
        kwargs.update(engine_kwargs)
        self.llm = LLM(model=model_dir, trust_remote_code=trust_remote_code, **kwargs)

    def generate(
        self, conversations: list[list[dict[str, str]]], params: SamplingConfig
    ) -> list[list[Generation]]:
        from vllm import SamplingParams

        # One request per sample, each with its own seed (see the module docstring); vLLM's prefix
        # cache shares the prompt's KV between the n requests of one prompt.
        flat_convs, flat_params = [], []
        for i, conv in enumerate(conversations):
            for k in range(params.n):
                flat_convs.append(conv)
                flat_params.append(
                    SamplingParams(
                        n=1,
                        temperature=params.temperature,
                        top_p=params.top_p,
                        top_k=0,
                        max_tokens=params.max_new_tokens,
                        seed=sample_seed(params, i, k),
                        skip_special_tokens=True,
                    )
                )
        if not flat_convs:
            return [[] for _ in conversations]
        results = self.llm.chat(flat_convs, flat_params, use_tqdm=False, add_generation_prompt=True)
        flat = [
            Generation(
                r.outputs[0].text.strip(),
                _finish(r.outputs[0].finish_reason),
                len(r.outputs[0].token_ids),
            )
            for r in results
        ]
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(conversations))]

    def close(self) -> None:
        import gc

        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(
                shutdown
            ):  # stops the engine-core process now rather than at garbage collection
                try:
                    shutdown()
                except Exception:  # pragma: no cover - best effort
                    log.debug("vLLM engine shutdown failed", exc_info=True)
            del llm
        gc.collect()


# --------------------------------------------------------------------------- server


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0) -> Any:
    import json

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _stop_process_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the server's process group (vLLM runs its engine in child processes), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def resolve_python(python: str | None) -> str:
    """The interpreter that runs the server: `vllm_python` (a path or a command name) or this one."""
    if not python:
        return sys.executable
    p = Path(python).expanduser()
    if p.exists():
        return str(p)  # relative paths stay relative to the working directory, like any CLI path
    import shutil

    found = shutil.which(python)
    if found:
        return found
    raise FileNotFoundError(
        f"sampling.vllm_python={python!r} does not exist (relative to {os.getcwd()}); "
        "create it with scripts/setup_vllm_cpu.sh (CPU) or point it at a python with vLLM installed"
    )


# Runs first in the server's process on Linux: asks the kernel to SIGTERM it when the process
# that started it dies (even by kill -9, when no finaliser runs), then becomes the server
# (exec keeps the setting). Without it, a killed stage would leave a vLLM server holding the GPU.
_LAUNCHER = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the parent is already gone
os.execv(sys.executable, [sys.executable] + sys.argv[2:])
"""


class VLLMServer:
    """A vLLM OpenAI-compatible server in a subprocess, for one checkpoint. Use as a context manager.

    `base_url` is `http://127.0.0.1:PORT/v1` once `start()` returns. The server's output goes to
    a log file (`log_path`), whose tail is put into the error when it fails to start. The process
    (a session leader, so its engine children go with it) is stopped by `stop()`, by the context
    manager, or at interpreter exit at the latest; on Linux also when this process is killed.
    """

    def __init__(
        self,
        model_dir: str | Path,
        params: SamplingConfig,
        *,
        trust_remote_code: bool = False,
        host: str = "127.0.0.1",
        served_model_name: str = SERVED_MODEL_NAME,
    ):
        self.model_dir = str(model_dir)
        self.params = params
        self.trust_remote_code = trust_remote_code
        self.host = host
        self.served_model_name = served_model_name
        self.python = resolve_python(params.vllm_python)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the vLLM server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        p = self.params
        cmd = [
            self.python,
            "-m",
            SERVER_MODULE,
            "--model",
            self.model_dir,
            "--host",
            self.host,
            "--port",
            str(port),
            "--served-model-name",
            self.served_model_name,
            "--dtype",
            p.vllm_dtype,
            "--seed",
            str(p.seed),
            "--generation-config",
            "vllm",
            "--tensor-parallel-size",
            str(p.vllm_tensor_parallel_size),
            "--disable-uvicorn-access-log",
        ]
        if (
            p.vllm_data_parallel_size > 1
        ):  # replicas behind this one endpoint (vLLM's own load balancing)
            cmd += ["--data-parallel-size", str(p.vllm_data_parallel_size)]
        if p.vllm_max_model_len is not None:
            cmd += ["--max-model-len", str(p.vllm_max_model_len)]
        if p.vllm_enforce_eager:
            cmd.append("--enforce-eager")
        if p.vllm_gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(p.vllm_gpu_memory_utilization)]
        if self.trust_remote_code:
            cmd.append("--trust-remote-code")
        return cmd + list(p.vllm_extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if Path(self.model_dir).is_dir():  # a local checkpoint: never reach for the hub
            env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # here, not at the top: VLLMGenerator also runs inside .venv-vllm (vllm-cpu), which has
        # none of the stage framework's dependencies (pyarrow) that importing sgpo.core brings
        from sgpo.core.threads import run_threads, thread_env

        env.update(thread_env(run_threads()))  # CPU threads of the run (sgpo.core.threads)
        # The pipeline's venv must not leak into another interpreter's imports.
        if self.python != sys.executable:
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
        env.update(self.params.vllm_env)
        return env

    def check_parallelism(self) -> None:
        """The parallel sizes against the devices the server's interpreter sees, before it starts."""
        p = self.params
        if p.vllm_tensor_parallel_size * p.vllm_data_parallel_size == 1:
            return
        env = self.environment()
        seen = probe_interpreter(self.python, env)
        check_parallel_sizes(
            p,
            cuda_devices=seen.get("cuda_devices"),
            cpu_vllm=seen.get("cpu_vllm"),
            cuda_visible=env.get("CUDA_VISIBLE_DEVICES"),
        )

    def start(self, attempts: int = 3) -> str:
        """Start the server and wait until it serves the model; returns the base URL."""
        self.check_parallelism()
        last_error = ""
        for _ in range(attempts):
            port = _free_port(self.host)
            fd, log_name = tempfile.mkstemp(prefix="sgpo-vllm-server-", suffix=".log")
            self.log_path = Path(log_name)
            cmd = self.command(port)
            log.info("starting vLLM server: %s (log: %s)", " ".join(cmd), self.log_path)
            launch = cmd
            if sys.platform.startswith("linux"):
                launch = [cmd[0], "-c", _LAUNCHER, str(os.getpid()), *cmd[1:]]
            with os.fdopen(fd, "wb") as out:
                self.proc = subprocess.Popen(
                    launch,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.environment(),
                    start_new_session=True,
                )
            self.port = port
            self._finalizer = weakref.finalize(self, _stop_process_group, self.proc, 10.0)
            try:
                self._wait_ready()
                return self.base_url
            except (
                _PortTaken
            ) as e:  # another process took the port between our probe and vLLM's bind
                last_error = str(e)
                self.stop()
                continue
            except BaseException:
                self.stop(keep_log=True)
                raise
        raise RuntimeError(
            f"the vLLM server could not bind a port in {attempts} attempts: {last_error}"
        )

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.log_path is not None
        timeout = self.params.server_startup_timeout_s
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.port}/v1/models"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = _tail(self.log_path)
                if "address already in use" in tail.lower():
                    raise _PortTaken(tail.splitlines()[-1] if tail else "address in use")
                raise RuntimeError(
                    f"the vLLM server exited with code {code} before it was ready; command: "
                    f"{' '.join(self.command(self.port or 0))}\nlast lines of {self.log_path}:\n{tail}"
                )
            try:
                models = _get_json(url, timeout=2.0)
                if any(m.get("id") == self.served_model_name for m in models.get("data", [])):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"the vLLM server did not answer on {url} within {timeout:.0f}s "
            f"(sampling.server_startup_timeout_s); last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, *, keep_log: bool = False) -> None:
        if self._finalizer is not None:
            self._finalizer()  # stops the process group once, whoever calls first
            self._finalizer = None
        if self.log_path is not None and not keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(RuntimeError):
    pass


def served_model(base_url: str) -> str:
    """The only model a server serves (vLLM serves one per process)."""
    url = base_url.rstrip("/") + "/models"
    try:
        data = _get_json(url).get("data", [])
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"sampling.base_url: {url} did not answer ({e!r}); is the vLLM server running?"
        ) from e
    ids = [m["id"] for m in data if isinstance(m, dict) and "id" in m]
    if len(ids) != 1:
        raise ValueError(f"{base_url} serves {ids or 'no models'}: set sampling.served_model_name")
    return ids[0]


class VLLMServerGenerator(OpenAIServerGenerator):
    """`backend: vllm_server`: a vLLM OpenAI-compatible server (started here unless base_url is set)."""

    def __init__(self, model_dir: str, params: SamplingConfig, *, trust_remote_code: bool = False):
        self.server: VLLMServer | None = None
        if params.base_url:
            base_url = params.base_url
            model = params.served_model_name or served_model(base_url)
        else:
            self.server = VLLMServer(model_dir, params, trust_remote_code=trust_remote_code)
            base_url = self.server.start()
            model = self.server.served_model_name
        super().__init__(base_url, model=model, max_concurrency=params.max_concurrency)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
