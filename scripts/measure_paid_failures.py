"""What a failure costs in paid LLM requests, measured against the local fake server (the numbers
in docs/usage.md, "Caching and resume").

    python scripts/measure_paid_failures.py SAMPLES WORKDIR crash --concurrency 2 --kills 6
    python scripts/measure_paid_failures.py SAMPLES WORKDIR invalid

SAMPLES is a `sample` artifact folder (the tiny pipeline's: 24 rows, 48 annotate calls). The server
is sgpo.llm.server over a deterministic model that, like a paid API, finishes and bills every
request it received (`--generation-s` each, so requests are in flight at a kill); its request log
says what was delivered. `crash` kills `sgpo stage annotate` (kill -9 of its process group) at
random moments, then lets a last run finish, and counts per kill the answers delivered to the
killed process that a later run asked again. `invalid` answers every request with '' and counts
the requests for max_invalid_retries = default, 0, 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sgpo.llm.server import ChatResult, FaultConfig, build_app, read_request_log, running_server

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


class BilledBackend:
    """A deterministic model that takes `seconds` per answer (generated, and billed, even when the
    client has gone meanwhile)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        time.sleep(self.seconds)
        digest = hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()
        words = [f"w{digest[i : i + 4]}" for i in range(0, 40, 4)]
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        return ChatResult(" ".join(words), "stop", prompt_tokens, len(words) + 1)


def annotate_command(samples: str, store: Path, url: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sgpo.cli.main",
        "stage",
        "annotate",
        "tiny",
        "--samples",
        samples,
        f"store.url={store}",
        "tracking.enabled=false",
        f"annotate.endpoint.base_url={url}",
        "annotate.endpoint.model=fake-ext",
        "annotate.endpoint.backoff_base_s=0.01",
        *overrides,
    ]


def journal_lines(store: Path) -> int:
    n = 0
    for p in store.glob("annotate/*/_work/**/*"):
        try:
            n += p.read_bytes().count(b"\n") if p.is_file() else 0
        except FileNotFoundError:  # renamed while we looked
            pass
    return n


def crash_cost(samples: str, work: Path, conc: int, kills: int, seed: int, gen_s: float) -> dict:
    store, log = work / f"store-crash-{conc}-{seed}", work / f"requests-crash-{conc}-{seed}.jsonl"
    shutil.rmtree(store, ignore_errors=True)
    log.unlink(missing_ok=True)
    rng = random.Random(seed)
    app = build_app(BilledBackend(gen_s), model_name="fake-ext", request_log=log)
    with running_server(app) as url:
        cmd = annotate_command(samples, store, url, f"annotate.endpoint.max_concurrency={conc}")
        bounds = []
        for _ in range(kills):
            bounds.append(len(read_request_log(log)))
            target = journal_lines(store) + rng.randint(1, 6)
            proc = subprocess.Popen(
                cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
            deadline = time.monotonic() + 300
            while journal_lines(store) < target and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the stage made no progress")
                time.sleep(0.002)
            if proc.poll() is not None:
                raise RuntimeError(
                    f"finished before the kill: {proc.stderr.read().decode()[-500:]}"
                )
            time.sleep(rng.uniform(0, gen_s))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            time.sleep(gen_s + 0.5)  # the server finishes (and logs) what was in flight
        bounds.append(len(read_request_log(log)))
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
    entries = read_request_log(log)
    bounds.append(len(entries))
    runs = [entries[a:b] for a, b in zip(bounds, bounds[1:])]
    delivered = [{e["client_request_id"] for e in run if e["delivered"]} for run in runs]
    sent = [{e["client_request_id"] for e in run} for run in runs]
    repaid = [len(delivered[i] & set().union(*sent[i + 1 :])) for i in range(len(runs) - 1)]
    return {
        "max_concurrency": conc,
        "kills": kills,
        "repaid_per_kill": repaid,
        "calls": len({e["client_request_id"] for e in entries}),
        "answers_delivered": sum(e["delivered"] for e in entries),
    }


def invalid_cost(samples: str, work: Path, retries: int | None) -> dict:
    name = "default" if retries is None else str(retries)
    store, log = work / f"store-empty-{name}", work / f"requests-empty-{name}.jsonl"
    shutil.rmtree(store, ignore_errors=True)
    log.unlink(missing_ok=True)
    faults = FaultConfig(rate_empty=1.0, max_faults_per_request=1000)
    app = build_app(BilledBackend(0.0), model_name="fake-ext", faults=faults, request_log=log)
    overrides = [] if retries is None else [f"annotate.endpoint.max_invalid_retries={retries}"]
    with running_server(app) as url:
        cmd = annotate_command(samples, store, url, *overrides)
        first = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        after_first = len(read_request_log(log))
        subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)  # a rerun
    entries = read_request_log(log)
    return {
        "max_invalid_retries": name,
        "exit": first.returncode,
        "calls": len({e["client_request_id"] for e in entries}),
        "requests": after_first,
        "requests_after_a_rerun": len(entries),
        "prompt_tokens_billed": sum(e.get("prompt_tokens") or 0 for e in entries if e["delivered"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("samples", help="a sample artifact folder")
    p.add_argument("work", type=Path, help="a scratch folder for the stores and request logs")
    p.add_argument("what", choices=("crash", "invalid"))
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--generation-s", type=float, default=0.3)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "crash":
        out = crash_cost(
            args.samples, args.work, args.concurrency, args.kills, args.seed, args.generation_s
        )
        print(json.dumps(out))
    else:
        for retries in (None, 0, 1):
            print(json.dumps(invalid_cost(args.samples, args.work, retries)), flush=True)


if __name__ == "__main__":
    main()
