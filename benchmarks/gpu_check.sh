#!/usr/bin/env bash
# The prepared GPU check: one script, at most ~10 minutes on one H100/H200, no network, one JSON.
#   generation tokens/s (transformers generate vs recap's decode loop vs vLLM when it imports), the RECAP /
#   vanilla step ratio (the transformers-only proxy step, and the real RecapTrainer with vLLM colocated
#   rollouts when vLLM imports, else transformers rollouts, and recap's loop), and a short RECAP run of the
#   miniature world at the paper's 16 rollouts. Stages are time-boxed (--budget-s, default 540 s) and
#   recorded as skipped, with the reason, when a package is missing or time runs out.
# Packages the GPU image lacks (trl, datasets, ...) travel as wheels in .whl/ (docs/performance.md says how
# to fetch them); without them the trainer stage is skipped. Without a GPU the script writes
# {"status": "no-gpu"} and exits with status 3 (--allow-cpu: a dry run on tiny shapes).
#   bash benchmarks/gpu_check.sh                       # writes $OUT/gpu_check.json (or ./gpu_check.json)
#   bash benchmarks/gpu_check.sh --budget-s 300        # extra arguments go to benchmarks/gpu_stages.py
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
RESULT="${OUT:-.}/gpu_check.json"
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
    export PYTHONPATH="$SITE:$PYTHONPATH"
  else
    echo "installing the carried wheels failed; continuing with what the image has" >&2
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: no GPU visible"
"$PY" benchmarks/gpu_stages.py --out "$RESULT" "$@"
status=$?
echo "gpu check exit status $status; result in $RESULT"
exit $status
