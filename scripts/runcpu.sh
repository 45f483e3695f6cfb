#!/usr/bin/env bash
# Quickstart 1: set up and run SFT -> SGPO -> judge on the CPU testbed (verifiable tasks, an oracle
# annotator and a verifier judge; embedded Prefect, local artifact store, MLflow on SQLite), a few
# minutes on 2 cores. Arguments replace the default: scripts/runcpu.sh tiny method=spin
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then set -- testbed; fi
exec .venv/bin/sgpo run "$@"
