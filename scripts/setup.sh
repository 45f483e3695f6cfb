#!/usr/bin/env bash
# Create .venv and install sgpo with pinned CPU-friendly versions; idempotent (skips when the
# pins have not changed since the last install). Usage: scripts/setup.sh [EXTRAS], e.g. "test".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "sgpo needs Python >= 3.10 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.sgpo-installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing sgpo${extras:+[$extras]} into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned (constraints.txt): an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -c constraints.txt torch
  .venv/bin/python -m pip install -q -c constraints.txt -e ".${extras:+[$extras]}"
  rm -f .venv/.sgpo-installed-*
  touch "$stamp"
fi
