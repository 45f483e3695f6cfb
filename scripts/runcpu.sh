#!/usr/bin/env bash
# Quickstart 1: set up and run the whole SGPO pipeline on the tiny CPU preset (embedded
# Prefect, local artifact store, MLflow on SQLite, a local stand-in for the external LLM).
# Extra arguments go to `sgpo run`, e.g.: scripts/runcpu.sh rounds=2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sgpo run "$@"
