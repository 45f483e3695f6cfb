"""`threads` reaches every CPU process sgpo starts (sgpo.core.threads): the CLI's own process (set
before torch loads), torch when it is already loaded, launched CPU ranks (their share), a vLLM
server's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "SGPO_THREADS")


def _python(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sgpo_run_sets_threads_before_torch_loads():
    """`sgpo run PRESET threads=1` on a machine whose environment says 2: torch's pool has 1 thread
    when the flow starts (the flow is replaced by a probe)."""
    seen = _python(
        """
        import json, os, sys
        import sgpo.cli.main as cli

        def probe(flow, **params):
            loaded_before = "torch" in sys.modules
            import torch
            print(json.dumps({"torch_threads": torch.get_num_threads(),
                              "omp": os.environ.get("OMP_NUM_THREADS"),
                              "threads_setting": params["config"].threads}))
            return None, 0

        cli._call_flow = probe
        cli.main(["run", "tiny", "threads=1", "tracking.enabled=false"])
        """,
        OMP_NUM_THREADS="2",
    )
    assert seen == {"torch_threads": 1, "omp": "1", "threads_setting": 1}


def test_torch_already_loaded_is_told_and_auto_uses_the_visible_cores():
    seen = _python(
        """
        import json, os
        import torch
        from sgpo.core.threads import configure_threads, visible_cpus

        before = torch.get_num_threads()
        n = configure_threads(1)
        after_one = torch.get_num_threads()
        os.environ.pop("OMP_NUM_THREADS")
        auto = configure_threads("auto")
        print(json.dumps({"n": n, "after_one": after_one, "auto": auto, "visible": visible_cpus(),
                          "now": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY")}))
        """
    )
    assert seen["n"] == seen["after_one"] == 1
    assert seen["auto"] == seen["visible"] == seen["now"]
    assert seen["policy"] == ("PASSIVE" if seen["visible"] > 1 else None)


def test_launched_cpu_ranks_get_their_share(monkeypatch):
    from sgpo.config import LaunchConfig
    from sgpo.train import launch

    monkeypatch.setattr(launch, "visible_gpus", lambda: 0)
    monkeypatch.setattr(launch, "visible_cpus", lambda: 8)
    monkeypatch.setenv("SGPO_THREADS", "8")  # the run's total (configure_threads)
    plan = launch.launch_plan(LaunchConfig(num_processes=2))
    assert plan.env["OMP_NUM_THREADS"] == plan.env["MKL_NUM_THREADS"] == "4"
    assert plan.env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("SGPO_THREADS", "2")
    plan = launch.launch_plan(LaunchConfig(num_processes=2))
    assert plan.env["OMP_NUM_THREADS"] == "1" and "OMP_WAIT_POLICY" not in plan.env


def test_a_vllm_server_gets_the_runs_threads(monkeypatch, tmp_path):
    from sgpo.config import SamplingConfig
    from sgpo.generate.vllm import VLLMServer

    monkeypatch.setenv("SGPO_THREADS", "3")
    env = VLLMServer(tmp_path, SamplingConfig(backend="vllm_server")).environment()
    assert env["OMP_NUM_THREADS"] == "3" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    mine = SamplingConfig(backend="vllm_server", vllm_env={"OMP_NUM_THREADS": "1"})
    assert VLLMServer(tmp_path, mine).environment()["OMP_NUM_THREADS"] == "1"  # vllm_env wins
