#!/usr/bin/env bash
# Quickstart 2: set up and run the default test suite (what CI runs). Extra arguments go to
# pytest, e.g. scripts/test.sh tests/unit (the unit tier, the edit loop), scripts/test.sh -m slow
# (the slow tests), scripts/test.sh -k config.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# tests/e2e/test_report_browser.py renders the run report in headless Chromium (Debian's package);
# installed here if absent and possible, else that test skips with the reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "[test] chromium not installed (apt-get failed)" >&2
fi
# the slow tests run the team's Prefect server on PostgreSQL (tests/postgres_helpers.py, the doc walk of
# docs/cluster.md): Debian's package, installed here if absent and possible, else those tests skip
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null 2>&1 || echo "[test] postgresql not installed (apt-get failed)" >&2
fi
# style first (seconds): the formatter's output and the linter's rules (pyproject.toml [tool.ruff])
.venv/bin/ruff format --check --quiet . || { echo "[test] run: .venv/bin/ruff format ." >&2; exit 1; }
.venv/bin/ruff check --quiet .
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest "$@"
