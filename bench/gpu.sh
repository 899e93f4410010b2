#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one run (a machine with CUDA, torch, numpy; pydantic is
# installed from ./.whl when it is missing there):
#     OUT=/tmp/gpu-out bash bench/gpu.sh [QUALITY_DIR]
# QUALITY_DIR (optional) is a folder from `bench/quality.py --stage corpus --out DIR`: its two
# models are trained here at the issue's size (800 steps) and the folder is packed into
# $OUT/quality.tar for the sample stage on a CPU machine.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=""
if ! python3 -c "import pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && site=/tmp/site
fi
export PYTHONPATH="$PWD/shared${site:+:$site}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$OUT/machine.txt"
if [ -n "${1:-}" ] && [ -d "$1" ]; then
  timeout 110 python3 bench/quality.py --stage train --from "$1" --device cuda --steps 800 \
    2>&1 | tee "$OUT/quality.log"
  tar -C "$(dirname "$1")" -cf "$OUT/quality.tar" "$(basename "$1")"
fi
timeout 100 python3 bench/sample.py --gpu-quick 2>&1 | tee "$OUT/sample.md"
timeout 100 python3 bench/train.py --gpu-quick 2>&1 | tee "$OUT/train.md"
