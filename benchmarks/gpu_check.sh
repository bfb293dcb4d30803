#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on one H100/H200; needs only PyTorch and transformers, no
# network): generation tokens/s and RECAP vs vanilla RL step cost on random-initialised ~0.5B and
# ~1.5B Qwen2-architecture models. Results: a table on stdout and gpu_check.json in $OUT (or here).
#   bash benchmarks/gpu_check.sh                 # defaults below
#   bash benchmarks/gpu_check.sh --steps 3       # extra arguments go to benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
exec "$PY" benchmarks/gpu_check.py --steps 2 --budget 512 --prefill-tokens 256 --out "${OUT:-.}/gpu_check.json" "$@"
