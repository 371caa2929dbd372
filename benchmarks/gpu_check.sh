#!/usr/bin/env bash
# The CUDA path in one go (under 10 minutes on one GPU):
#   1. the tests marked `cuda` (tests/test_cuda.py: identify with every strategy in float32 and bf16
#      autocast, chunk-size equality, a correction round, bit-exact revert, an interpolator frame);
#   2. benchmarks/identify.py on CUDA against its per-image baseline, in float32 and in bf16.
# Prints the figures; the last lines are the benchmarks' JSON.
#
# Usage (from a checkout with `make install` done, or PY pointing at a Python with the package):
#   bash benchmarks/gpu_check.sh            # PY defaults to .venv/bin/python
#   PY=python IMAGES=450 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
IMAGES=${IMAGES:-450}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DEFUSE_WIDGETS_TEST_THREADS=${DEFUSE_WIDGETS_TEST_THREADS:-4}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" - <<'PYEOF'
import sys
import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s); nothing to check" % torch.__version__)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF

echo "== 1/3 tests marked cuda"
timeout 300 "$PY" -m pytest -q -rs -m cuda tests/test_cuda.py

echo "== 2/3 identify benchmark on CUDA, float32 (baseline: per-image loop, same Q and k)"
timeout 150 "$PY" benchmarks/identify.py --device cuda --images "$IMAGES" --repeats 3 \
  | tee /tmp/gpu_check_fp32.txt

echo "== 3/3 identify benchmark on CUDA, bf16 autocast"
timeout 150 "$PY" benchmarks/identify.py --device cuda --autocast bf16 --images "$IMAGES" \
  --repeats 3 | tee /tmp/gpu_check_bf16.txt

echo "== figures"
for run in fp32 bf16; do
  echo "$run: $(tail -n 1 /tmp/gpu_check_$run.txt)"
done
