"""A process that lost its lease stops before paying (issue 22, item 4).

Process A annotates with a short lease and is stopped (SIGSTOP) after 10 of 64 paid calls, as a
laptop that sleeps or a paused container would be. B finds the lease stale, takes it over, reuses
A's 10 journaled answers and pays for the rest. A is resumed (SIGCONT) while B works: before the fix
it re-sent its whole queue (56 calls paid twice, both published the same key); now it confirms its
lease before its next request, finds it taken, sends nothing, and ends with B's artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa

from sgpo.config import AnnotateStageConfig, EndpointConfig, StoreConfig
from sgpo.core import StageContext
from sgpo.llm.server import ChatResult, build_app, running_server

REPO = Path(__file__).resolve().parents[2]
N_ROWS = 32  # 64 calls: an improvement and a direct answer per row
STOP_AT = 10  # answers paid before A is stopped
RESUME_AT = 30  # answers paid (10 by A, 20 by B) when A is resumed

STAGE_SCRIPT = """
import sys
from artifacts.refs import ArtifactRef
from sgpo.config import AnnotateStageConfig
from sgpo.core import StageContext, run_stage
from tasks import get_stage
ctx = StageContext.model_validate_json(sys.argv[1])
samples = ArtifactRef.model_validate_json(sys.argv[2])
cfg = AnnotateStageConfig.model_validate_json(sys.argv[3])
print(run_stage(get_stage("annotate"), cfg, ctx, {"samples": samples}).model_dump_json())
"""


class StallingBackend:
    """A deterministic fake LLM that counts each distinct request it answers; at its STOP_AT-th
    answer it stops process A (and fails that request: unanswered, so unpaid), and at RESUME_AT
    it resumes A."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answered: Counter = Counter()
        self.a_pid: int | None = None
        self.stopped = threading.Event()
        self.resumed = threading.Event()

    def chat(
        self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop
    ) -> ChatResult:
        digest = hashlib.sha256(json.dumps([messages, seed]).encode()).hexdigest()
        with self.lock:
            paid = sum(self.answered.values())
            if paid == STOP_AT and not self.stopped.is_set():
                os.kill(self.a_pid, signal.SIGSTOP)
                self.stopped.set()
                raise RuntimeError("the client was stopped before this answer")
            if paid == RESUME_AT and not self.resumed.is_set():
                os.kill(self.a_pid, signal.SIGCONT)
                self.resumed.set()
            self.answered[digest] += 1
        words = [f"w{digest[i : i + 4]}" for i in range(0, 24, 4)]
        return ChatResult(" ".join(words), "stop", 10, len(words) + 1)


def test_a_stalled_process_that_lost_its_lease_sends_no_paid_request(tmp_path):
    ctx = StageContext(
        store=StoreConfig(url=str(tmp_path / "store"), lease_timeout_s=4, lease_poll_s=0.5)
    )
    store = ctx.open_store()
    samples = store.publish_table(
        "sample",
        "s" * 64,
        pa.table(
            {
                "prompt_id": [f"p{i}" for i in range(N_ROWS)],
                "prompt": [f"Question {i}: what is {i} + {i}?" for i in range(N_ROWS)],
                "reference": [f"It is {2 * i}." for i in range(N_ROWS)],
                "policy": [f"I think {2 * i + 1}." for i in range(N_ROWS)],
                "sample_index": [0] * N_ROWS,
                "policy_finish_reason": ["stop"] * N_ROWS,
            }
        ),
        manifest={},
    )
    backend = StallingBackend()
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with running_server(build_app(backend, model_name="fake-ext")) as url:
        cfg = AnnotateStageConfig(
            endpoint=EndpointConfig(
                base_url=url,
                model="fake-ext",
                api_key_env="SGPO_TEST_NO_SUCH_KEY",
                max_concurrency=1,  # one request in flight: the stop lands between two requests
                backoff_base_s=0.05,
                backoff_max_s=0.1,
                timeout_s=60,
            ),
            max_tokens=64,
        )
        args = [sys.executable, str(script), ctx.model_dump_json()]
        args += [samples.model_dump_json(), cfg.model_dump_json()]
        a = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        backend.a_pid = a.pid
        try:
            assert backend.stopped.wait(120), "A never reached its 11th call"
            b = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
            assert b.returncode == 0, b.stderr[-3000:]
            assert backend.resumed.is_set()  # A ran again while B was paying for the rest
            a_out, a_err = a.communicate(timeout=120)
        finally:
            if a.poll() is None:
                os.kill(a.pid, signal.SIGCONT)
                a.kill()
    assert a.returncode == 0, a_err.decode()[-3000:]
    assert "lost its lease" in a_err.decode()
    b_ref = json.loads(b.stdout.strip().splitlines()[-1])
    a_ref = json.loads(a_out.decode().strip().splitlines()[-1])
    assert a_ref["uri"] == b_ref["uri"] and a_ref["content_hash"] == b_ref["content_hash"]
    assert b_ref["summary"]["from_journal"] == STOP_AT and b_ref["summary"]["sent"] == 64 - STOP_AT
    # every call paid exactly once: none repaid by A after it woke, none by B
    assert len(backend.answered) == 64 and set(backend.answered.values()) == {1}
