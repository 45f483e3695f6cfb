"""The stand-in LLM leaves no thread inside torch when its process exits (issue 20, failure 2).

A generation still running in the server's worker thread when the interpreter finalises aborts the
process (libtorch's destructors run under it: "terminate called without an active exception",
SIGABRT, status 134), so a failed `sgpo run` died instead of printing its one-line error. Here a
client gives up on a long generation and the process exits while the model is still generating.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time, urllib.request

    from sgpo.llm.embedded import EmbeddedLLM

    llm = EmbeddedLLM(lambda: sys.argv[1], max_new_tokens_cap=6000)
    url = llm.base_url()
    body = {"model": "sgpo-embedded", "max_tokens": 6000, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Tell me everything."}]}

    def impatient_client():
        req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=1)
        except Exception:
            pass  # gave up: the server is still generating

    threading.Thread(target=impatient_client, daemon=True).start()
    time.sleep(2.0)
    t0 = time.perf_counter()
    llm.close()
    print(json.dumps({"close_s": time.perf_counter() - t0}), flush=True)
    """
)


def test_process_exits_cleanly_while_the_stand_in_is_generating(endless_model):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(endless_model)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert "terminate called" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    closed = json.loads(proc.stdout.strip().splitlines()[-1])
    # the generation under way stopped at its next token: close() did not wait for 6000 of them
    assert closed["close_s"] < 5, closed
    assert time.perf_counter() - t0 < 120
