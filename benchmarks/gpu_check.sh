#!/bin/sh
# One prepared run on a GPU machine (its own python3 and torch, no venv, no network):
# build against that torch, run the GPU tests (-m gpu; CI runs the rest), run the GPU benchmarks,
# print one table (the 2b pretraining step with FSDP2 + checkpointing + bf16 included).
# Must finish well inside 6 minutes on one H100. `make gpu-check` calls this.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export SKYSENSE_CUDA=ON PYTHONUNBUFFERED=1
t0=$(date +%s)
$PY -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
echo "build: $(( $(date +%s) - t0 )) s"
$PY -c "import json, skysense_fast; print(json.dumps(skysense_fast.backends(), indent=1))"
$PY -m pytest tests -q -m gpu -p no:cacheprovider 2>&1 | tail -15   # the CPU suite runs in CI
$PY benchmarks/gpu_check.py
echo "total: $(( $(date +%s) - t0 )) s"
