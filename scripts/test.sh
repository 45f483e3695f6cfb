#!/usr/bin/env bash
# Quickstart 2: set up and run the default test suite (what CI runs). Extra arguments go to
# pytest, e.g. scripts/test.sh -m slow (the slow tests), scripts/test.sh -k config.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest "$@"
