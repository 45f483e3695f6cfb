"""`python -m sgpo.llm.server`: the server in a process of its own, over a local model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from sgpo.core.threads import configure_threads, parse_threads
from sgpo.llm import server
from sgpo.llm.server.app import build_app
from sgpo.llm.server.faults import FaultConfig
from sgpo.llm.server.transformers_backend import TransformersChatBackend


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sgpo.llm.server", description=server.__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model", required=True, help="Local model dir (saved with save_pretrained)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="Model id reported to clients (default: the dir name)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--fault-config", default=None, help="FaultConfig as a JSON string or a path to a JSON file"
    )
    parser.add_argument(
        "--request-log", default=None, help="Append one JSON line per request to this file"
    )
    parser.add_argument(
        "--max-tokens-cap", type=int, default=None, help="Upper bound on any request's max_tokens"
    )
    parser.add_argument(
        "--threads",
        default="auto",
        type=parse_threads,
        help="CPU threads: 'auto' (OMP_NUM_THREADS if set, else the visible cores) or N",
    )
    args = parser.parse_args(argv)
    configure_threads(args.threads)  # before the model (and torch's thread pool) loads

    import uvicorn

    faults = None
    if args.fault_config:
        raw = args.fault_config
        if not raw.lstrip().startswith("{") and Path(raw).exists():
            raw = Path(raw).read_text()
        faults = FaultConfig.model_validate_json(raw)
    backend = TransformersChatBackend(args.model, device=args.device)
    app = build_app(
        backend,
        model_name=args.served_model_name or Path(args.model).name,
        faults=faults,
        request_log=args.request_log,
        max_tokens_cap=args.max_tokens_cap,
        max_parallel=1,  # one model, one generation at a time: drop what clients gave up on
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
