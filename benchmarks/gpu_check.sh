#!/usr/bin/env bash
# One prepared run on a GPU machine (its own python3 and torch, no venv, no network): build
# against that torch, run the GPU tests (-m gpu; CI runs the rest), then the GPU benchmarks,
# each table printed as soon as it is measured. Any failure fails the run (pipefail; nothing
# is piped through tail, so a time-out keeps everything printed so far). `make gpu-check`
# calls this; it must finish within 5 minutes on one H100 / H200, build included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export SKYSENSE_CUDA=ON PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi
t0=$(date +%s)
echo "== build (against $($PY -c 'import torch; print(torch.__version__)'))"
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip install -q --no-build-isolation --no-deps -e .
echo "build: $(( $(date +%s) - t0 )) s"
$PY -c "import json, skysense_fast; print(json.dumps(skysense_fast.backends(), indent=1))"
echo "== GPU tests"
tests=0
$PY -m pytest tests -q -m gpu -p no:cacheprovider || tests=$?
echo "tests done (exit $tests): $(( $(date +%s) - t0 )) s"
echo "== GPU benchmarks"   # measured even when a test failed: device time is scarce
bench=0
$PY benchmarks/gpu_check.py || bench=$?
echo "total: $(( $(date +%s) - t0 )) s"
if [ "$tests" != 0 ] || [ "$bench" != 0 ]; then
  echo "gpu-check FAILED: GPU tests exit $tests, benchmarks exit $bench" >&2
  exit 1
fi
