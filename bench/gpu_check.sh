#!/usr/bin/env bash
# bash bench/gpu_check.sh [--keep DIR]: the GPU check kit (bench/gpu_check.py says what it runs).
# On a CUDA host: one table, exit 1 if a check failed. Without CUDA: says so and exits 0.
source "$(dirname "$0")/../bin/_bootstrap"
cd "$ROOT"
exec python -m bench.gpu_check "$@"
